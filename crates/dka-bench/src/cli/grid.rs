//! `dka grid`: run an experiment's grid (resumable, shardable) and write its table and
//! figure; or plan it (`--plan`), list it (`--dry-run`) or write it as a Slurm job array
//! (`--emit-slurm N`).
use super::args::DataArgs;
use crate::config::experiment::Experiment;
use crate::grid::experiment::{emit_job_array, run_experiment, ExperimentOptions};
use crate::grid::plan::{plan_grids, PlanOptions};
use crate::grid::runner::Shard;
use crate::grid::slurm::SlurmOptions;
use crate::util::device::{pick, DeviceArg};
use anyhow::bail;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An experiment file (experiments/*.toml).
    pub experiment: PathBuf,
    /// Profile of the experiment: `quick` (tiny backbone, minutes on a CPU), `paper` (the
    /// authors' protocol: best test epoch), `demo`...; none: the paper's settings, honest
    /// selection.
    #[arg(long)]
    pub profile: Option<String>,
    /// Output folder (default results/<experiment name>[-<profile>]).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only shard I of N (`I/N`, 0-based I): shards run separately cover the grid once.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// List the runs still to do without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Run again the runs whose last attempt failed (by default they are reported, not retried).
    #[arg(long)]
    pub retry_failed: bool,
    /// Write TensorBoard event files in every run's folder (`tensorboard --logdir OUT/runs`
    /// compares the runs); off by default for grids, whose folders are committed.
    #[arg(long)]
    pub tensorboard: bool,
    /// Keep every run's final state however large (full fine-tuning: ~1 GB per ViT-B run), so
    /// that a later grid with more epochs continues it; smaller states are always kept.
    #[arg(long)]
    pub keep_state: bool,
    /// Run the grid with N worker processes on this machine, sharing it run by run as Slurm
    /// shards do (each run once, resumable): on the CPU the cores are split between them; with
    /// CUDA each takes one device (the first N visible, or --devices).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// CUDA devices for the workers, one each: `cuda:0,cuda:1` (implies one worker per device).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<DeviceArg>,
    /// Internal: this process is a worker of `--workers` (runs runs, writes no table).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Print the runs still to do and an estimate of their time on this device; run nothing.
    #[arg(long)]
    pub plan: bool,
    /// Timed steps per distinct model when planning.
    #[arg(long, default_value_t = 2)]
    pub plan_steps: usize,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

impl Args {
    pub fn options(&self) -> ExperimentOptions {
        ExperimentOptions {
            experiment: self.experiment.clone(),
            profile: self.profile.clone(),
            out: self.out.clone(),
            shard: self.shard,
            dry_run: self.dry_run,
            retry_failed: self.retry_failed,
            tensorboard: self.tensorboard,
            keep_state: self.keep_state,
            workers: self.workers,
            devices: self.devices.clone(),
            worker: self.worker,
            sources: self.data.sources(),
        }
    }
}

/// The Slurm side of `dka grid` (used with `--emit-slurm N`).
#[derive(clap::Args, Clone, Debug)]
pub struct SlurmArgs {
    /// Write an sbatch job-array script with N tasks (task i runs shard i/N) to
    /// OUT/grid.sbatch instead of running; submit it with `sbatch`.
    #[arg(long, value_name = "N", conflicts_with_all = ["shard", "dry_run", "plan"])]
    pub emit_slurm: Option<usize>,
    /// [slurm] GPUs per array task (`#SBATCH --gres=gpu:N`); 0 asks for none and runs on the
    /// CPU (CPU-only clusters) [default: 1; 0 with --device cpu].
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    /// [slurm] GPU type as the cluster names it in GRES (`--gres=gpu:TYPE:N`), e.g. a100.
    #[arg(long, value_name = "TYPE")]
    pub gpu_type: Option<String>,
    /// [slurm] CPUs per array task (data loading, libtorch threads).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub cpus_per_task: u32,
    /// [slurm] Memory per array task (`--mem`: a number with an optional K, M, G or T suffix).
    #[arg(long, default_value = "32G", value_name = "SIZE")]
    pub mem: String,
    /// [slurm] Time limit per array task (`--time`: MINUTES, HH:MM:SS, D-HH:MM:SS, ...).
    #[arg(long, default_value = "24:00:00", value_name = "LIMIT")]
    pub time: String,
    /// [slurm] Partition (`--partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// [slurm] Account to charge (`--account`).
    #[arg(long)]
    pub account: Option<String>,
    /// [slurm] Seconds before the time limit at which Slurm sends dka SIGTERM
    /// (`--signal=B:TERM@SECONDS`).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub term_before: u32,
    /// [slurm] Let Slurm requeue a task after preemption or a node failure (`--requeue`); the
    /// requeued task resumes the shard.
    #[arg(long)]
    pub requeue: bool,
    /// [slurm] One more header line, `#SBATCH --OPTION` or just `--OPTION` (repeatable), e.g.
    /// `--sbatch-extra "#SBATCH --qos=high"`.
    #[arg(long, value_name = "LINE", allow_hyphen_values = true)]
    pub sbatch_extra: Vec<String>,
}

impl SlurmArgs {
    /// What each array task asks Slurm for.
    pub fn options(&self) -> SlurmOptions {
        SlurmOptions {
            gpus_per_task: self.gpus_per_task,
            gpu_type: self.gpu_type.clone(),
            cpus_per_task: self.cpus_per_task,
            mem: self.mem.clone(),
            time: self.time.clone(),
            partition: self.partition.clone(),
            account: self.account.clone(),
            term_before: self.term_before,
            requeue: self.requeue,
            sbatch_extra: self.sbatch_extra.clone(),
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let o = a.options();
    if let Some(n) = a.slurm.emit_slurm {
        let (script, runs) = emit_job_array(&o, n, &a.slurm.options())?;
        println!(
            "wrote {}: {n} array task(s) for {runs} run(s); submit with `sbatch {}`",
            script.display(),
            script.display()
        );
        if n > runs {
            eprintln!(
                "note: {} of the {n} tasks have no run to do (the grid has {runs})",
                n - runs
            );
        }
        return Ok(());
    }
    if a.plan {
        let exp = Experiment::load(&a.experiment)?;
        let opts = PlanOptions {
            profile: a.profile.clone(),
            out: a.out.clone(),
            plan_steps: a.plan_steps,
            sources: a.data.sources(),
        };
        let plan = plan_grids(&[(&a.experiment, exp)], &opts, pick(a.data.device)?)?;
        super::plan::print(&plan, opts.out.as_deref());
        return Ok(());
    }
    let outcome = run_experiment(&o)?;
    let s = &outcome.summary;
    if o.dry_run {
        for spec in &outcome.planned {
            println!("{} {:?}", spec.id, spec.axes);
        }
        println!(
            "{}: {} run(s) to do, {} done, {} failed earlier",
            outcome.name,
            s.planned.len(),
            s.skipped_already_done,
            s.skipped_failed
        );
        return Ok(());
    }
    println!(
        "{}: {} run(s) finished now, {} already done, {} failed; table: {}",
        outcome.name,
        s.finished,
        s.skipped_already_done,
        outcome.failed.len(),
        outcome.out.join("table.md").display()
    );
    if !s.running_elsewhere.is_empty() {
        println!(
            "{} run(s) were running in another process and are not in the table yet",
            s.running_elsewhere.len()
        );
    }
    if !outcome.failed.is_empty() {
        for r in &outcome.failed {
            eprintln!("failed: {} {:?}: {}", r.id, r.axes, outcome.error_of(r));
        }
        bail!(
            "{} run(s) of {} failed (listed above and in {}); every other run and the table are \
             complete; rerun with --retry-failed to try them again",
            outcome.failed.len(),
            outcome.name,
            outcome.out.join("runs.csv").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_takes_bare_sbatch_options() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            slurm: SlurmArgs,
            #[arg(long)]
            shard: Option<String>,
            #[arg(long)]
            dry_run: bool,
            #[arg(long)]
            plan: bool,
        }
        let c = Cli::try_parse_from([
            "dka",
            "--emit-slurm",
            "4",
            "--sbatch-extra",
            "--qos=high",
            "--sbatch-extra",
            "#SBATCH --exclusive",
        ])
        .unwrap();
        assert_eq!(c.slurm.sbatch_extra, ["--qos=high", "#SBATCH --exclusive"]);
        assert!(Cli::try_parse_from(["dka", "--emit-slurm", "4", "--shard", "0/4"]).is_err());
    }
}
