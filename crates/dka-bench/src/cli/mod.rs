//! The `dka` command line: one file per subcommand, each a clap `Args` and a `run` that turns
//! the arguments into a library call's options, makes the call and prints what it returned.
//! Flags several subcommands share are in [`args`]. Nothing else in the crate uses this layer.
pub mod args;
pub mod bench;
pub mod convert;
pub mod data;
pub mod erf;
pub mod eval;
pub mod export;
pub mod features;
pub mod gpu_check;
pub mod grid;
pub mod info;
pub mod inspect;
pub mod params;
pub mod plan;
pub mod plots;
pub mod predict;
pub mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dka",
    version,
    about = "Dual-Kernel Adapter toolkit: frozen backbones, adapters, paper experiments"
)]
pub struct Cli {
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
    Train(train::Args),
    /// The runs of one or more grids still to do and an estimate of their time on this device.
    Plan(plan::Args),
    /// Evaluate a trained run on its split (default: test) or on external data with its
    /// classes; --per-case writes one row per image or case and summary.json.
    Eval(eval::Args),
    /// Run an experiment's grid (resumable, shardable) and write its table like the paper's.
    Grid(grid::Args),
    /// Datasets: inspect a release, draw a split, write its manifest.
    #[command(subcommand)]
    Data(data::Command),
    /// Trainable and total parameter counts of a backbone under each method.
    Params(params::Args),
    /// Benchmarks (CSV under results/bench/).
    #[command(subcommand)]
    Bench(bench::Command),
    /// Rename a checkpoint's keys to timm's (torchvision ViT, SAM/MedSAM, DDP prefixes).
    Convert(convert::Args),
    /// Check this build on the GPU: forward parity (fp32, bf16), a training step of every
    /// method with time and peak memory, a short grid; writes results/gpu/check.csv.
    GpuCheck(gpu_check::Args),
    /// Effective receptive field (RepLKNet's procedure) of a trained run, a method at
    /// initialisation, or a grid's runs: score maps, area ratios, heatmaps (Figures 2 and 6).
    Erf(erf::Args),
    /// Redraw every figure under a results folder from its CSVs (no training).
    Plots(plots::Args),
    /// A trained run in PyTorch's formats: dka's modules on timm (torch), peft's LoRA folder
    /// (peft) or one timm state dict (merged); with a model card.
    Export(export::Args),
    /// Predict new images and NIfTI volumes with a trained run: labels (predictions.csv) or
    /// masks at the inputs' own size.
    Predict(predict::Args),
    /// What a trained run's modules do: how much they change their input, DKA's branch norms,
    /// the large kernel's energy beyond radius 2 (initial vs trained).
    Inspect(inspect::Args),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Features(a) => features::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Params(a) => params::run(a),
        Command::Data(c) => data::run(c),
        Command::Train(a) => train::run(a),
        Command::Grid(a) => grid::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Bench(c) => bench::run(c),
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::Erf(a) => erf::run(a),
        Command::Plots(a) => plots::run(a),
        Command::Export(a) => export::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Inspect(a) => inspect::run(a),
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

/// The `dka` binary: parse, run, print the error chain on one line; the exit status says how
/// it ended (128 + the signal after a SIGINT/SIGTERM that saved a checkpoint).
pub fn main() -> ExitCode {
    passive_openmp();
    crate::util::malloc::tune();
    // A bug must still reach the user as one line, not a backtrace.
    crate::util::panics::install_hook();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(crate::util::progress::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .init();
    // A grid worker's share of the cores (`dka grid --workers`).
    if std::env::var_os("DKA_CORES").is_some() {
        tch::set_num_threads(crate::util::device::cores() as i32);
    }
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            crate::util::interrupt::exit_code(&e).map_or(ExitCode::FAILURE, ExitCode::from)
        }
        Err(_) => ExitCode::from(101),
    }
}
