//! The `dka` toolkit's runner side as a library: the one trainer every method goes through,
//! evaluation and metrics, experiment grids (resumable, shardable), tables and figures, and the
//! subcommands' implementations. The `dka` binary (`src/main.rs`) only parses arguments and
//! dispatches here, so the runner can be driven and tested without spawning the binary.
pub mod aggregate;
pub mod bench;
pub mod bench_cases;
pub mod bench_data;
pub mod bench_endpoint;
pub mod bench_report;
pub mod bench_steps;
pub mod bench_synth;
pub mod bench_worker;
pub mod convert;
pub mod data;
pub mod decoder;
pub mod device;
pub mod erf_cmd;
pub mod evaluate;
pub mod experiment;
pub mod features;
pub mod gpu_check;
pub mod grid;
pub mod grid_cmd;
pub mod identity;
pub mod info;
pub mod interrupt;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod plan;
pub mod plan_cmd;
pub mod plots;
pub mod precision;
pub mod progress;
pub mod run_cmd;
pub mod run_config;
pub mod slurm;
pub mod stats;
pub mod synth;
pub mod train;
