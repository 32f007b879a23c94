//! `dka`: fine-tune frozen vision backbones with the Dual-Kernel Adapter and its baselines.
//!
//! A thin binary over the library crates: `main` parses the arguments into typed options,
//! calls a subcommand returning `anyhow::Result`, and prints the error chain on one line.

use clap::{Parser, Subcommand};
use dka_bench::{
    bench, bench_data, bench_steps, bench_worker, convert, data, erf_cmd, features, gpu_check,
    grid_cmd, info, params, plan_cmd, plots, run_cmd,
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dka",
    version,
    about = "Dual-Kernel Adapter toolkit: frozen backbones, adapters, paper experiments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the compute device, CPU threads, the libtorch in use and whether CUDA works.
    Info(info::Args),
    /// Run a backbone on a batch and write its features (and logits when the weights hold a head).
    Features(features::Args),
    /// Train one run from a RunConfig file (TOML or JSON).
    Train(run_cmd::TrainArgs),
    /// The runs of one or more grids still to do and an estimate of their time on this device.
    Plan(plan_cmd::PlanArgs),
    /// Evaluate a trained run's saved tensors on its split (default: test).
    Eval(run_cmd::EvalArgs),
    /// Run an experiment's grid (resumable, shardable) and write its table like the paper's.
    Grid(grid_cmd::GridArgs),
    /// Datasets: inspect a release, draw a split, write its manifest.
    #[command(subcommand)]
    Data(data::Command),
    /// Trainable and total parameter counts of a backbone under each method.
    Params(params::Args),
    /// Benchmarks (CSV under results/bench/).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Rename a checkpoint's keys to timm's (torchvision ViT, SAM/MedSAM, DDP prefixes).
    Convert(convert::Args),
    /// Check this build on the GPU: forward parity (fp32, bf16), a training step of every
    /// method with time and peak memory, a short grid; writes results/gpu/check.csv.
    GpuCheck(gpu_check::Args),
    /// Effective receptive field (RepLKNet's procedure) of a trained run, a method at
    /// initialisation, or a grid's runs: score maps, area ratios, heatmaps (Figures 2 and 6).
    Erf(erf_cmd::Args),
    /// Redraw every figure under a results folder from its CSVs (no training).
    Plots(plots::Args),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// DKA's depthwise convolutions: plain reference vs the exact fast path.
    Conv(bench::Args),
    /// The data path: images/s uncached vs the decoded cache (ISIC-2019-like JPEGs, BraTS-like volumes).
    Data(bench_data::Args),
    /// One training step side by side with a PyTorch-eager reference (time, GFLOP/s, peak
    /// memory, loss parity): results/bench/steps.csv.
    Steps(bench_steps::Args),
    /// Internal: one implementation of a `bench steps` case, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Features(a) => features::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Params(a) => params::run(a),
        Command::Data(c) => data::run(c),
        Command::Train(a) => run_cmd::train(a),
        Command::Grid(a) => grid_cmd::grid(a),
        Command::Eval(a) => run_cmd::eval(a),
        Command::Plan(a) => plan_cmd::plan_cmd(a),
        Command::Bench(BenchCommand::Conv(a)) => bench::run(a),
        Command::Bench(BenchCommand::Data(a)) => bench_data::run(a),
        Command::Bench(BenchCommand::Steps(a)) => bench_steps::run(a),
        Command::Bench(BenchCommand::Worker) => bench_worker::serve(),
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::Erf(a) => erf_cmd::run(a),
        Command::Plots(a) => plots::run(a),
    }
}

/// libtorch's OpenMP threads spin while they wait (GNU OpenMP's default ACTIVE policy). With
/// 2 cores shared with the data loader's threads that spinning takes the cores the work needs:
/// measured here, a TinyViT evaluation took 11.8 s instead of 0.7 s under load, and a small
/// model's epoch 1.9 s instead of 0.8 s on an idle machine. libgomp reads its policy when it
/// loads, before `main`, so the process re-executes itself once with `OMP_WAIT_POLICY=PASSIVE`
/// unless the user has set a policy.
fn passive_openmp() {
    #[cfg(unix)]
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OMP_WAIT_POLICY", "PASSIVE")
                .exec();
            // exec returns only on failure: go on with the default policy.
            eprintln!("note: could not re-execute with OMP_WAIT_POLICY=PASSIVE ({err})");
        }
    }
}

fn main() -> ExitCode {
    passive_openmp();
    // A bug must still reach the user as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let first = msg.lines().next().unwrap_or(msg);
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {first}{at}");
    }));
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            // Stopped by SIGINT/SIGTERM after a checkpoint: 128 + signal, as shells expect.
            dka_bench::interrupt::exit_code(&e).map_or(ExitCode::FAILURE, ExitCode::from)
        }
        Err(_) => ExitCode::from(101),
    }
}
