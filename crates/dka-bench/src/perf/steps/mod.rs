//! `dka bench steps`: the same training step in this project and in a PyTorch-eager reference
//! written the way a researcher would (`benches/reference/steps.py`: timm + plain modules),
//! side by side: time, achieved GFLOP/s against the machine's measured fp32 GEMM throughput,
//! and peak memory, per case.
//!
//! Every implementation of a case runs in its own process (a `dka bench worker`, or the Python
//! reference), so each peak memory is its own: CPU, the resident set's high-water mark
//! (`VmHWM`, reset after setup so that loading the weights does not count); CUDA, the caching
//! allocator's peak. The workers of a case start together and are driven one step at a time,
//! interleaved (A B A B ..., the order rotated every round), so drifts of the machine's speed
//! hit both alike; the timed steps follow the parity steps, whose losses must agree to
//! round-off (same weights and batch, exported from this project to the reference through
//! safetensors; dropout off). Results: a CSV, a `.meta.json` (machine, commit, load, targets
//! met or missed) and a PNG bar chart of the ratios to the reference.
use crate::util::device::DeviceArg;
use std::path::PathBuf;

pub mod case;
pub mod cases;
pub mod driver;
pub mod endpoint;
pub mod meter;
pub mod profile;
pub mod protocol;
pub mod report;
pub mod server;
pub mod worker;

pub use cases::{cases, CaseSpec, Impl};
pub use driver::{run, run_with};
pub use endpoint::{Endpoint, Launcher};

/// How to run the bench (`dka bench steps`' flags).
#[derive(Debug, Clone)]
pub struct StepsOptions {
    /// CSV to write (a `.meta.json` and a `.png` go next to it).
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    pub device: DeviceArg,
    /// Timed interleaved rounds per case (3 when a reference step takes over 20 s on the CPU).
    pub reps: usize,
    /// Untimed steps whose losses both implementations must agree on (the first one also
    /// warms up and counts the reference's FLOPs).
    pub parity_steps: usize,
    /// Largest accepted loss difference, relative to max(1, |reference loss|).
    pub loss_tol: f64,
    /// The same for bf16 cases (two bf16 implementations round differently: bf16 keeps 8
    /// significant bits, 3.9e-3 relative per rounding).
    pub loss_tol_bf16: f64,
    /// fp32 and/or bf16 (autocast in both implementations); bf16 cases are named `… bf16`.
    pub precisions: Vec<crate::config::run::Precision>,
    /// Only the cases whose name contains one of these (comma-separated).
    pub cases: Vec<String>,
    /// Tiny models instead of the paper's (seconds; for checking the bench itself).
    pub quick: bool,
    /// The Python of the reference (with torch, timm, safetensors).
    pub python: PathBuf,
    /// The reference implementation.
    pub reference: PathBuf,
    /// Skip the bar chart.
    pub no_plot: bool,
    /// Threads of each implementation (OMP_NUM_THREADS and MKL_NUM_THREADS of the workers);
    /// default: libtorch's (the CPU cores).
    pub threads: Option<usize>,
    /// Keep subnormal floats. By default both implementations flush them to zero
    /// (`torch.set_flush_denormal(True)`): arithmetic on subnormals is many times slower on
    /// x86 and whether a step meets them depends on the weights and data (the reference's
    /// depthwise convolutions met them in the first steps from random weights, 8x slower).
    pub keep_subnormals: bool,
    /// Profile instead of timing: traces and the per-operator comparison go into this folder.
    pub profile: Option<PathBuf>,
    /// Steps under the profiler per implementation.
    pub profile_steps: usize,
}

impl Default for StepsOptions {
    fn default() -> Self {
        Self {
            output: PathBuf::from("results/bench/steps.csv"),
            device: DeviceArg::Cpu,
            reps: 5,
            parity_steps: 2,
            loss_tol: 1e-4,
            loss_tol_bf16: 3e-2,
            precisions: vec![crate::config::run::Precision::Fp32],
            cases: Vec::new(),
            quick: false,
            python: PathBuf::from(".venv/bin/python"),
            reference: PathBuf::from("benches/reference/steps.py"),
            no_plot: false,
            threads: None,
            keep_subnormals: false,
            profile: None,
            profile_steps: 3,
        }
    }
}

fn fp32_label() -> String {
    "fp32".into()
}

/// What one implementation of one case measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub case: String,
    /// fp32 or bf16 (autocast); absent in files of older versions: fp32.
    #[serde(default = "fp32_label")]
    pub precision: String,
    #[serde(rename = "impl")]
    pub imp: String,
    pub device: String,
    pub batch: i64,
    pub steps_timed: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Median time / the reference's median time.
    pub time_ratio: f64,
    /// FLOPs of one step as the reference's operations count them (matmuls, attention,
    /// convolutions; the depthwise convolutions at their direct cost).
    pub gflop_step: f64,
    /// Of which GEMM-like (everything but depthwise convolutions).
    pub gflop_dense: f64,
    /// gflop_step / median time.
    pub gflops: f64,
    /// This implementation's measured GEMM throughput in the case's precision.
    pub gemm_gflops: f64,
    /// (gflop_dense / gemm_gflops) / median time: the fraction of the GEMM-bound limit.
    pub gemm_bound_frac: f64,
    /// Peak memory: CPU the resident set's high-water mark over the steps (the process's
    /// libraries and weights included), CUDA the allocator's peak.
    pub peak_mib: f64,
    /// Memory before the first step (after loading).
    pub base_mib: f64,
    /// peak - base: what the steps add (activations, gradients, optimiser state).
    pub step_mib: f64,
    /// Peak / the reference's peak.
    pub peak_ratio: f64,
    /// step_mib / the reference's step_mib.
    pub step_mem_ratio: f64,
    pub loss_step1: f64,
    /// Largest |loss - reference loss| / max(1, |reference loss|) over the parity steps.
    pub loss_diff: f64,
    pub trainable: i64,
    /// 1-minute load average when the case started.
    pub load1: f64,
    /// Cores the machine's other processes used on average during the kept rounds.
    pub others_cores: f64,
    /// Rounds discarded because other processes used more than 0.25 cores meanwhile.
    pub rounds_discarded: usize,
}
