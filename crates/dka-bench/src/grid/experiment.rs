//! Running an experiment: its grid checked before any work (device, weights, datasets,
//! results folder), resolved (every run's id from its identity), run (resumable, shardable,
//! several processes on one folder), then its table and figure written
//! ([`super::outputs`]); or written as a Slurm job array instead.
use super::outputs::write_outputs;
use super::resolve::resolve_runs;
use super::runner::{run_grid, GridOptions, GridSummary, RunResult, Shard};
use super::runs_csv;
use super::slurm::{self, SlurmOptions};
use crate::config::experiment::{Experiment, Profile};
use crate::config::record::{RunRecord, Status};
use crate::config::run::RunConfig;
use crate::config::sources::Sources;
use crate::config::spec::RunSpec;
use crate::util::device::{pick, DeviceArg};
use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tch::Device;

/// What to run, and how.
#[derive(Debug, Clone, Default)]
pub struct ExperimentOptions {
    /// The experiment file (experiments/*.toml).
    pub experiment: PathBuf,
    /// The experiment's profile (`None`: as written, the paper's settings).
    pub profile: Option<String>,
    /// The output folder (default: results/<experiment name>[-<profile>]).
    pub out: Option<PathBuf>,
    /// Only this shard of the grid.
    pub shard: Option<Shard>,
    /// List the runs still to do; run nothing.
    pub dry_run: bool,
    /// Run again the runs whose last attempt failed.
    pub retry_failed: bool,
    /// TensorBoard event files in every run's folder.
    pub tensorboard: bool,
    /// Keep every run's final state, however large (full fine-tuning), for later continuing.
    pub keep_state: bool,
    /// Worker processes sharing the grid on this machine (0 or 1: this process runs it).
    pub workers: usize,
    /// CUDA devices for the workers, one each (empty: the first `workers` visible ones when
    /// the device is CUDA; the CPU's cores split otherwise).
    pub devices: Vec<DeviceArg>,
    /// This process is one of `--workers`' workers: run runs only; the parent writes the table.
    pub worker: bool,
    pub sources: Sources,
}

/// An experiment file read, with its profile, its runs and its output folder.
pub struct Loaded {
    pub exp: Experiment,
    pub prof: Profile,
    pub specs: Vec<RunSpec>,
    pub out: PathBuf,
}

/// Reads the experiment and lists its runs (under the profile); creates the output folder.
pub fn load(o: &ExperimentOptions) -> anyhow::Result<Loaded> {
    let exp = Experiment::load(&o.experiment)?;
    let prof = exp.profile(o.profile.as_deref())?;
    let specs = exp.runs(o.profile.as_deref())?;
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| default_out(&exp, o.profile.as_deref()));
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    Ok(Loaded {
        exp,
        prof,
        specs,
        out,
    })
}

/// results/<experiment name>[-<profile>]
pub fn default_out(exp: &Experiment, profile: Option<&str>) -> PathBuf {
    PathBuf::from("results").join(match profile {
        Some(p) => format!("{}-{p}", exp.name),
        None => exp.name.clone(),
    })
}

/// What running an experiment did.
pub struct Outcome {
    pub name: String,
    pub out: PathBuf,
    pub summary: GridSummary,
    /// Dry run: the runs that would run, with their axes.
    pub planned: Vec<RunSpec>,
    /// The grid's runs that are recorded as failed (now or earlier).
    pub failed: Vec<RunRecord>,
}

impl Outcome {
    /// The error of a failed run: this attempt's, else its record's.
    pub fn error_of(&self, r: &RunRecord) -> String {
        self.summary
            .failed
            .iter()
            .find(|(id, _)| *id == r.id)
            .map(|(_, e)| e.clone())
            .or_else(|| r.error.clone())
            .unwrap_or_default()
    }
}

/// Runs the experiment's grid (or, with `dry_run`, lists what is left), then writes its table
/// and figure. Failed runs are recorded and reported in the outcome, not errors.
pub fn run_experiment(o: &ExperimentOptions) -> anyhow::Result<Outcome> {
    let Loaded {
        exp,
        prof,
        specs,
        out,
    } = load(o)?;
    let device = pick(o.sources.device)?;
    if !o.dry_run && !o.worker {
        preflight(&exp, &prof, o, &specs, device)?;
        let probe = out.join(".write-test");
        std::fs::write(&probe, b"ok")
            .with_context(|| format!("the results folder {} is not writable", out.display()))?;
        let _ = std::fs::remove_file(probe);
    }
    crate::util::interrupt::install()?;
    let (specs, mut resolved) = resolve_runs(specs, &o.sources, device)?;
    // Runs whose epochs grew go on from their finished shorter runs.
    let (specs, renamed) = super::continuation::plan(&out, specs);
    for (old, new) in renamed {
        tracing::info!("run {old}: continues a finished run with fewer epochs, as run {new}");
        if let Some(r) = resolved.remove(&old) {
            resolved.insert(new, r);
        }
    }
    let opts = GridOptions {
        shard: o.shard,
        dry_run: o.dry_run,
        retry_failed: o.retry_failed,
        shared: o.worker,
    };
    let bar = crate::util::progress::bar(specs.len() as u64, "runs");
    let profile = o.profile.clone().unwrap_or_else(|| "paper settings".into());
    let train_opts = crate::train::TrainOptions {
        tensorboard: o.tensorboard,
        continuing: false,
        keep_state: o.keep_state,
    };
    let mut run_one = |spec: &RunSpec, dir: &Path| -> anyhow::Result<RunResult> {
        let p = resolved.get(&spec.id).context("a resolved run")?;
        let mut opts = train_opts;
        if let Some(src) = &spec.continues {
            super::continuation::seed(&out, src, dir)?;
            opts.continuing = true;
        }
        let o = crate::train::train(&p.cfg, &p.data, dir, device, opts);
        bar.inc(1);
        let o = o?;
        let mut info = o.info;
        info.insert("weights".into(), p.weights_label.clone());
        info.insert("profile".into(), profile.clone());
        if let Some(src) = &spec.continues {
            info.insert("continued_from".into(), src.clone());
        }
        Ok(RunResult {
            metrics: o.metrics,
            info,
        })
    };
    let summary = match worker_slots(o, device)? {
        Some(slots) => {
            crate::util::progress::done(&bar);
            run_by_workers(o, &out, &specs, &slots)?
        }
        None => run_grid(&out, &specs, &opts, &mut run_one)?,
    };
    crate::util::progress::done(&bar);
    let mut outcome = Outcome {
        name: exp.name.clone(),
        out: out.clone(),
        planned: Vec::new(),
        failed: Vec::new(),
        summary,
    };
    if o.dry_run {
        outcome.planned = specs
            .iter()
            .filter(|s| outcome.summary.planned.contains(&s.id))
            .cloned()
            .collect();
        return Ok(outcome);
    }
    let records = runs_csv::rebuild(&out)?;
    if o.worker {
        // The parent writes the table once every worker is done.
        return Ok(outcome);
    }
    let ids: BTreeSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    let current: Vec<&RunRecord> = records
        .iter()
        .filter(|r| ids.contains(r.id.as_str()))
        .collect();
    write_outputs(
        o,
        &exp,
        &prof,
        &specs,
        &out,
        &current,
        records.len() - current.len(),
    )?;
    outcome.failed = current
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| (*r).clone())
        .collect();
    Ok(outcome)
}

/// The grid run by worker processes (`slots`), and what they did as a [`GridSummary`] (from
/// the runs' records before and after).
fn run_by_workers(
    o: &ExperimentOptions,
    out: &Path,
    specs: &[RunSpec],
    slots: &[super::workers::Slot],
) -> anyhow::Result<GridSummary> {
    use crate::config::record::read_record;
    let record = |s: &RunSpec| read_record(&out.join("runs").join(&s.id));
    let before: Vec<Option<Status>> = specs.iter().map(|s| record(s).map(|r| r.status)).collect();
    let mut args = vec!["grid".to_string(), o.experiment.display().to_string()];
    args.extend(forward_args(o, out));
    tracing::info!(
        "{} worker(s) on {}",
        slots.len(),
        slots
            .iter()
            .map(|s| match s.cores {
                Some(k) => format!("{k} core(s)"),
                None => s.device.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ended = super::workers::run(&args, slots, out, specs)?;
    let mut summary = GridSummary::default();
    let mut unfinished = 0;
    for (s, was) in specs.iter().zip(before) {
        match (was, record(s)) {
            (Some(Status::Ok), _) => summary.skipped_already_done += 1,
            (Some(Status::Failed), Some(r)) if r.status == Status::Failed && !o.retry_failed => {
                summary.skipped_failed += 1
            }
            (_, Some(r)) if r.status == Status::Ok => summary.finished += 1,
            (_, Some(r)) => summary
                .failed
                .push((r.id.clone(), r.error.clone().unwrap_or_default())),
            (_, None) => unfinished += 1,
        }
    }
    if let Some(sig) = crate::util::interrupt::requested() {
        return Err(anyhow::Error::new(crate::util::interrupt::Interrupted {
            signal: sig,
            resume_at: format!("{unfinished} run(s) to go ({})", out.display()),
        }));
    }
    if unfinished > 0 {
        tracing::warn!(
            "{unfinished} run(s) not finished ({} worker(s) stopped early): run the grid again \
             to resume them",
            ended.died.len()
        );
    }
    Ok(summary)
}

/// Refuses, before any work, a grid that would run somewhere or on something the user did not
/// mean: a paper-scale profile on the CPU, without weights, or with dataset folders missing.
fn preflight(
    exp: &Experiment,
    prof: &Profile,
    o: &ExperimentOptions,
    specs: &[RunSpec],
    device: Device,
) -> anyhow::Result<()> {
    let profile = o
        .profile
        .as_deref()
        .unwrap_or("(none: the paper's settings)");
    if device == Device::Cpu && o.sources.device != DeviceArg::Cpu && !prof.cpu {
        bail!(
            "{}: profile {profile} would run on the CPU (no usable CUDA device; a ViT-B grid on a \
             CPU takes months): pass --device cpu to insist, or use a quick profile",
            exp.name
        );
    }
    let configs: Vec<RunConfig> = specs
        .iter()
        .map(|s| Ok(o.sources.resolve(serde_json::from_value(s.config.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    if !prof.random_weights && configs.iter().any(|c| c.weights.is_none()) {
        bail!(
            "{}: profile {profile} needs pretrained backbone weights: pass --weights FILE.safetensors \
             (just: weights=FILE; per backbone: BACKBONE=FILE), or --weights none for the \
             random-initialisation control",
            exp.name
        );
    }
    // Each weights file is loaded once into its backbone now, so a wrong file fails the grid
    // before any run instead of failing every run the same way.
    let mut checked = BTreeSet::new();
    for c in &configs {
        if let Some(w) = c.weights_file() {
            if !w.is_file() {
                bail!("--weights {}: no such file", w.display());
            }
            if checked.insert((c.backbone.clone(), w.to_path_buf())) {
                check_weights(&c.backbone, w).with_context(|| {
                    format!("{}: weights for backbone {}", exp.name, c.backbone)
                })?;
            }
        }
    }
    let datasets: BTreeSet<&str> = configs.iter().map(|c| c.dataset.as_str()).collect();
    let mut missing = Vec::new();
    for d in datasets {
        match o.sources.root(d) {
            Ok(root) if root.is_dir() => {}
            Ok(root) => missing.push(format!("{d} (no folder {})", root.display())),
            Err(e) => missing.push(format!("{d} ({e})")),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}: {} dataset folder(s) missing, nothing was run: {}",
            exp.name,
            missing.len(),
            missing.join("; ")
        );
    }
    Ok(())
}

/// Loads `weights` into a `backbone` on the CPU (the load report fails on missing, unused or
/// mis-shaped keys other than the head's).
fn check_weights(backbone: &str, weights: &Path) -> anyhow::Result<()> {
    let mut cfg = dka_core::BackboneConfig::from_spec(backbone)?;
    cfg.set_num_classes(0);
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let _model = dka_core::Backbone::new(&vs.root(), &cfg)?;
    dka_core::weights::load_into(&mut vs, weights, cfg.head_prefix())?;
    Ok(())
}

/// What another `dka grid` process of this grid (a Slurm array task, a worker) is passed
/// besides the experiment, the shard and the device, one word each.
fn forward_args(o: &ExperimentOptions, out: &Path) -> Vec<String> {
    let mut fwd: Vec<String> = Vec::new();
    if let Some(p) = &o.profile {
        fwd.extend(["--profile".into(), p.clone()]);
    }
    fwd.extend(o.sources.to_args());
    fwd.extend(["--out".into(), out.display().to_string()]);
    if o.retry_failed {
        fwd.push("--retry-failed".into());
    }
    if o.tensorboard {
        fwd.push("--tensorboard".into());
    }
    if o.keep_state {
        fwd.push("--keep-state".into());
    }
    fwd
}

/// The worker slots of `o` on `device` (`None`: this process runs the grid itself).
fn worker_slots(
    o: &ExperimentOptions,
    device: Device,
) -> anyhow::Result<Option<Vec<super::workers::Slot>>> {
    if o.worker || o.dry_run || (o.workers <= 1 && o.devices.len() <= 1) {
        return Ok(None);
    }
    let devices: Vec<DeviceArg> = if !o.devices.is_empty() {
        o.devices.clone()
    } else if device.is_cuda() {
        let n = tch::Cuda::device_count() as usize;
        anyhow::ensure!(
            o.workers <= n,
            "--workers {}: {n} CUDA device(s) visible, one worker per device",
            o.workers
        );
        (0..o.workers).map(DeviceArg::Cuda).collect()
    } else {
        Vec::new()
    };
    Ok(Some(super::workers::slots(
        o.workers,
        &devices,
        crate::util::device::cores(),
    )?))
}

/// Writes the experiment as an sbatch job array of `tasks` tasks (one shard each) instead of
/// running it; returns the script's path and the number of runs.
pub fn emit_job_array(
    o: &ExperimentOptions,
    tasks: usize,
    slurm_opts: &SlurmOptions,
) -> anyhow::Result<(PathBuf, usize)> {
    let Loaded { specs, out, .. } = load(o)?;
    let fwd = forward_args(o, &out);
    let job = slurm::Job {
        experiment: &o.experiment,
        out: &out,
        tasks,
        runs: specs.len(),
        device: o.sources.device,
        forward: &fwd,
    };
    Ok((slurm::emit(slurm_opts, &job)?, specs.len()))
}
