//! The `dka` toolkit's runner side as a library: the one trainer every method goes through,
//! experiment grids, tables and figures, benchmarks, and the `dka` command line over them.
//! The binary (`src/main.rs`) only calls [`cli::main`], so every command can be driven and
//! tested without spawning it.
//!
//! Layers, top to bottom; a module uses only the layers below its own (`scripts/layers.py`,
//! run by `just test`, fails on any `use crate::…` that points up or sideways):
//!
//! | layer | modules | job |
//! |---|---|---|
//! | 5 | [`cli`] | one file per subcommand: clap arguments turned into library options, then one call |
//! | 4 | [`perf`] | `dka bench` (conv, data, steps against PyTorch) and `dka gpu-check` |
//! | 3 | [`grid`], [`analysis`] | running an experiment (run ids, `runs.csv` and locks, time estimate, Slurm); what is done with a model or a trained run besides training it (features, parameter counts, ERF) |
//! | 2 | [`train`], [`report`] | one run (model, data, optimiser, precision, checkpoint, evaluation, the loop); tables, statistics and figures from CSVs (never from `train` or `grid`) |
//! | 1 | [`config`] | what a run and a grid are, as data: `RunConfig`, `Experiment`, run ids and records, metric names |
//! | 0 | [`util`] | atomic writers, median/mean/std, provenance, devices, progress, interrupts, fonts |
pub mod analysis;
pub mod cli;
pub mod config;
pub mod grid;
pub mod perf;
pub mod report;
pub mod train;
pub mod util;
