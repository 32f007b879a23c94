//! Measuring this build on the machine at hand: `dka bench` ([`conv`]: DKA's depthwise
//! convolutions; [`data`]: the data path, on synthetic releases from [`releases`]; [`steps`]:
//! a training step against a PyTorch-eager reference) and `dka gpu-check` ([`gpu_check`]:
//! parity, steps and a grid on CUDA); [`speed`]: the machine's speed now. Results are CSVs under `results/bench/` and
//! `results/gpu/`, each with a `.meta.json` saying how they were made.
pub mod conv;
pub mod data;
pub mod gpu_check;
pub mod releases;
pub mod speed;
pub mod steps;
