//! `dka grid`: an experiment's grid — checked before any work (device, weights, datasets,
//! results folder), planned (every run's id from its identity), run (resumable, shardable),
//! then aggregated into the paper's table layout and figure; or written as a Slurm job array.
use crate::aggregate::{aggregate, PaperTable, TableSpec};
use crate::device::{pick, DeviceArg};
use crate::evaluate::{metric_names, SEGMENTATION};
use crate::experiment::{Experiment, Profile};
use crate::grid::{run_grid, runs_csv, GridOptions, RunResult, RunSpec, Shard};
use crate::identity::{file_sha256, run_identity};
use crate::plan_cmd::{plan_grids, PlanOptions};
use crate::run_cmd::DataArgs;
use crate::run_config::RunConfig;
use crate::train::data::{open, split_spec, RunData};
use anyhow::{bail, Context};
use dka_data::Dataset;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

#[derive(clap::Args)]
pub struct GridArgs {
    /// An experiment file (experiments/*.toml).
    experiment: PathBuf,
    /// Profile of the experiment: `quick` (tiny backbone, minutes on a CPU), `paper` (the
    /// authors' protocol: best test epoch), `demo`...; none: the paper's settings, honest
    /// selection.
    #[arg(long)]
    profile: Option<String>,
    /// Output folder (default results/<experiment name>[-<profile>]).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only shard I of N (`I/N`, 0-based I): shards run separately cover the grid once.
    #[arg(long)]
    shard: Option<String>,
    /// List the runs still to do without running them.
    #[arg(long)]
    dry_run: bool,
    /// Run again the runs whose last attempt failed (by default they are reported, not retried).
    #[arg(long)]
    retry_failed: bool,
    /// Print the runs still to do and an estimate of their time on this device; run nothing.
    #[arg(long)]
    plan: bool,
    /// Timed steps per distinct model when planning.
    #[arg(long, default_value_t = 2)]
    plan_steps: usize,
    #[command(flatten)]
    slurm: crate::slurm::SlurmArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// A run ready to go: its spec (id from its identity), its config, its data.
pub(crate) struct Planned {
    pub(crate) cfg: RunConfig,
    pub(crate) data: Arc<RunData>,
    pub(crate) weights_label: String,
}

/// Refuses, before any work, a grid that would run somewhere or on something the user did not
/// mean: a paper-scale profile on the CPU, without weights, or with dataset folders missing.
fn preflight(
    exp: &Experiment,
    prof: &Profile,
    a: &GridArgs,
    specs: &[RunSpec],
    device: Device,
) -> anyhow::Result<()> {
    let profile = a
        .profile
        .as_deref()
        .unwrap_or("(none: the paper's settings)");
    if device == Device::Cpu && a.data.device != DeviceArg::Cpu && !prof.cpu {
        bail!(
            "{}: profile {profile} would run on the CPU (no usable CUDA device; a ViT-B grid on a \
             CPU takes months): pass --device cpu to insist, or use a quick profile",
            exp.name
        );
    }
    let configs: Vec<RunConfig> = specs
        .iter()
        .map(|s| Ok(a.data.resolve(serde_json::from_value(s.config.clone())?)))
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
        match a.data.root(d) {
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

/// Opens every dataset and split the grid needs (once each), hashes the weights, and gives
/// each run its id from its identity.
pub(crate) fn plan(
    specs: Vec<RunSpec>,
    data_args: &DataArgs,
    device: Device,
) -> anyhow::Result<(Vec<RunSpec>, HashMap<String, Planned>)> {
    let cache_dir = data_args.cache_dir();
    let mut datasets: HashMap<String, Arc<dyn Dataset>> = HashMap::new();
    let mut splits: HashMap<String, Arc<RunData>> = HashMap::new();
    let mut hashes: HashMap<PathBuf, String> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    let mut planned = HashMap::new();
    let bar = crate::progress::bar(specs.len() as u64, "planning");
    for spec in specs {
        let cfg = data_args.resolve(serde_json::from_value(spec.config.clone())?);
        let resolved = cfg.resolve(device)?;
        let ds_key = format!(
            "{}|{}",
            cfg.dataset,
            serde_json::to_string(&cfg.data_options)?
        );
        let ds = match datasets.get(&ds_key) {
            Some(d) => d.clone(),
            None => {
                let d = open(
                    &cfg.dataset,
                    &data_args.root(&cfg.dataset)?,
                    &cfg.data_options,
                )?;
                datasets.insert(ds_key.clone(), d.clone());
                d
            }
        };
        let split_key = format!("{ds_key}|{}", serde_json::to_string(&split_spec(&cfg)?)?);
        let data = match splits.get(&split_key) {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(RunData::new(ds, &cfg, &cache_dir)?);
                splits.insert(split_key, d.clone());
                d
            }
        };
        let weights_sha = match cfg.weights_file() {
            Some(w) => Some(match hashes.get(w) {
                Some(h) => h.clone(),
                None => {
                    let h = file_sha256(w, &cache_dir)?;
                    hashes.insert(w.to_path_buf(), h.clone());
                    h
                }
            }),
            None => None,
        };
        let weights_label = match (cfg.weights_file(), &weights_sha) {
            (Some(w), Some(h)) => format!(
                "{} (sha256 {})",
                w.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default(),
                &h[..12]
            ),
            _ => "random init".to_string(),
        };
        let identity = run_identity(&resolved, weights_sha.as_deref(), &data.split_sha256)?;
        let spec = RunSpec::with_identity(spec.axes, serde_json::to_value(&cfg)?, identity);
        planned.insert(
            spec.id.clone(),
            Planned {
                cfg,
                data,
                weights_label,
            },
        );
        out.push(spec);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((out, planned))
}

/// The values an axis takes, in grid order.
fn axis_order(specs: &[RunSpec], axis: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for s in specs {
        if let Some(v) = s.axes.get(axis) {
            if !seen.contains(v) {
                seen.push(v.clone());
            }
        }
    }
    seen
}

pub fn grid(a: GridArgs) -> anyhow::Result<()> {
    let exp = Experiment::load(&a.experiment)?;
    let prof = exp.profile(a.profile.as_deref())?;
    let specs = exp.runs(a.profile.as_deref())?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(match &a.profile {
            Some(p) => format!("{}-{p}", exp.name),
            None => exp.name.clone(),
        })
    });
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    if let Some(n) = a.slurm.emit_slurm {
        return emit_job_array(&a, n, specs.len(), &out);
    }
    let device = pick(a.data.device)?;
    if a.plan {
        let opts = PlanOptions {
            profile: a.profile.clone(),
            out: a.out.clone(),
            data: a.data.clone(),
            plan_steps: a.plan_steps,
        };
        return plan_grids(&[(&a.experiment, exp)], &opts, device);
    }
    if !a.dry_run {
        preflight(&exp, &prof, &a, &specs, device)?;
        let probe = out.join(".write-test");
        std::fs::write(&probe, b"ok")
            .with_context(|| format!("the results folder {} is not writable", out.display()))?;
        let _ = std::fs::remove_file(probe);
    }
    crate::interrupt::install()?;
    let (specs, planned) = plan(specs, &a.data, device)?;
    let shard = a.shard.as_deref().map(str::parse::<Shard>).transpose()?;
    let opts = GridOptions {
        shard,
        dry_run: a.dry_run,
        retry_failed: a.retry_failed,
    };
    let bar = crate::progress::bar(specs.len() as u64, "runs");
    let profile = a.profile.clone().unwrap_or_else(|| "paper settings".into());
    let mut run_one = |spec: &RunSpec, dir: &Path| -> anyhow::Result<RunResult> {
        let p = planned.get(&spec.id).context("a planned run")?;
        let o = crate::train::train(&p.cfg, &p.data, dir, device);
        bar.inc(1);
        let o = o?;
        let mut info = o.info;
        info.insert("weights".into(), p.weights_label.clone());
        info.insert("profile".into(), profile.clone());
        Ok(RunResult {
            metrics: o.metrics,
            info,
        })
    };
    let summary = run_grid(&out, &specs, &opts, &mut run_one)?;
    bar.finish_and_clear();
    if a.dry_run {
        for id in &summary.planned {
            let s = specs.iter().find(|s| &s.id == id).expect("a planned spec");
            println!("{id} {:?}", s.axes);
        }
        println!(
            "{}: {} run(s) to do, {} done, {} failed earlier",
            exp.name,
            summary.planned.len(),
            summary.skipped_already_done,
            summary.skipped_failed
        );
        return Ok(());
    }
    let records = runs_csv::rebuild(&out)?;
    let ids: BTreeSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    let current: Vec<&runs_csv::RunRecord> = records
        .iter()
        .filter(|r| ids.contains(r.id.as_str()))
        .collect();
    write_tables(
        &a,
        &exp,
        &prof,
        &specs,
        &out,
        &current,
        records.len() - current.len(),
    )?;
    report(&exp, &out, &summary, &current)
}

/// `table.csv`, `table.md`, the figure and `experiment.json` of the grid's current runs.
fn write_tables(
    a: &GridArgs,
    exp: &Experiment,
    prof: &Profile,
    specs: &[RunSpec],
    out: &Path,
    current: &[&runs_csv::RunRecord],
    left_out: usize,
) -> anyhow::Result<()> {
    let paper = exp
        .paper
        .as_ref()
        .map(|f| {
            PaperTable::load(
                &a.experiment
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("paper")
                    .join(f),
                &exp.paper_rows,
            )
        })
        .transpose()?;
    let segmentation = SEGMENTATION.contains(&exp.metric.as_str());
    let extra: Vec<String> = if exp.metric == "primary" {
        Vec::new()
    } else {
        metric_names(segmentation)
            .iter()
            .filter(|m| **m != exp.metric)
            .map(|m| m.to_string())
            .collect()
    };
    let mut notes = Vec::new();
    if let Some(n) = &prof.note {
        notes.push(n.clone());
    }
    // The experiment's notes describe the paper's data; a small (CPU) profile runs on other
    // data and says so in its own note.
    if !prof.cpu || a.profile.is_none() {
        notes.extend(exp.notes.iter().cloned());
    }
    let table = TableSpec {
        title: exp.title.clone(),
        metric: exp.metric.clone(),
        extra,
        row_axis: exp.rows.clone(),
        row_order: axis_order(specs, &exp.rows),
        col_axes: exp.columns.clone(),
        col_orders: exp.columns.iter().map(|c| axis_order(specs, c)).collect(),
        paper: paper.as_ref(),
        notes,
        profile: a.profile.clone(),
    };
    aggregate(out, &table, current, left_out)?;
    let draws = current
        .iter()
        .filter_map(|r| r.axes.get("draw"))
        .collect::<BTreeSet<_>>()
        .len()
        .max(1);
    // Say what the runs were: every backbone and weights file behind the figure.
    let distinct = |f: &dyn Fn(&runs_csv::RunRecord) -> Option<String>| -> String {
        let v: BTreeSet<String> = current.iter().filter_map(|r| f(r)).collect();
        match v.len() {
            0 => "?".into(),
            1..=2 => v.into_iter().collect::<Vec<_>>().join(", "),
            n => format!("{n} backbones/weights"),
        }
    };
    let figure_title = format!(
        "{} — {} ({}), {} draw(s)",
        exp.title,
        distinct(&|r| r.info.get("backbone").map(|b| crate::plots::short_name(b))),
        distinct(&|r| r.info.get("weights").cloned()),
        draws
    );
    crate::plots::plot(
        out,
        exp.plot,
        &figure_title,
        &exp.metric,
        &exp.rows,
        &exp.columns,
    )?;
    runs_csv::write_atomic(
        &out.join("experiment.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "experiment": a.experiment, "profile": a.profile, "title": exp.title, "metric": exp.metric,
            "runs": specs.len(), "machine": crate::info::machine(),
        }))?
        .as_bytes(),
    )?;
    Ok(())
}

/// What ran, what failed (the exit status says so), what runs elsewhere.
fn report(
    exp: &Experiment,
    out: &Path,
    summary: &crate::grid::GridSummary,
    current: &[&runs_csv::RunRecord],
) -> anyhow::Result<()> {
    let failed_now: BTreeMap<&str, &str> = summary
        .failed
        .iter()
        .map(|(id, e)| (id.as_str(), e.as_str()))
        .collect();
    let failed_all: Vec<&runs_csv::RunRecord> = current
        .iter()
        .copied()
        .filter(|r| r.status == runs_csv::Status::Failed)
        .collect();
    println!(
        "{}: {} run(s) finished now, {} already done, {} failed; table: {}",
        exp.name,
        summary.finished,
        summary.skipped_already_done,
        failed_all.len(),
        out.join("table.md").display()
    );
    if !summary.running_elsewhere.is_empty() {
        println!(
            "{} run(s) were running in another process and are not in the table yet",
            summary.running_elsewhere.len()
        );
    }
    if !failed_all.is_empty() {
        for r in &failed_all {
            let e = failed_now
                .get(r.id.as_str())
                .copied()
                .or(r.error.as_deref())
                .unwrap_or("");
            eprintln!("failed: {} {:?}: {e}", r.id, r.axes);
        }
        bail!(
            "{} run(s) of {} failed (listed above and in {}); every other run and the table are \
             complete; rerun with --retry-failed to try them again",
            failed_all.len(),
            exp.name,
            out.join("runs.csv").display()
        );
    }
    Ok(())
}

/// Writes the grid as an sbatch job array of `n` tasks (one shard each) instead of running it.
fn emit_job_array(a: &GridArgs, n: usize, runs: usize, out: &Path) -> anyhow::Result<()> {
    // What every array task passes on besides the shard and the device, one word each.
    let mut fwd: Vec<String> = Vec::new();
    let mut arg = |k: &str, v: String| fwd.extend([k.to_string(), v]);
    if let Some(p) = &a.profile {
        arg("--profile", p.clone());
    }
    for d in &a.data.data {
        arg("--data", d.clone());
    }
    if let Some(d) = &a.data.data_dir {
        arg("--data-dir", d.display().to_string());
    }
    for w in &a.data.weights {
        arg("--weights", w.clone());
    }
    if let Some(c) = &a.data.cache_dir {
        arg("--cache-dir", c.display().to_string());
    }
    arg("--out", out.display().to_string());
    if a.retry_failed {
        fwd.push("--retry-failed".into());
    }
    let job = crate::slurm::Job {
        experiment: &a.experiment,
        out,
        tasks: n,
        runs,
        device: a.data.device,
        forward: &fwd,
    };
    let script = crate::slurm::emit(&a.slurm, &job)?;
    println!(
        "wrote {}: {n} array task(s) for {} run(s); submit with `sbatch {}`",
        script.display(),
        runs,
        script.display()
    );
    if n > runs {
        eprintln!(
            "note: {} of the {n} tasks have no run to do (the grid has {})",
            n - runs,
            runs
        );
    }
    Ok(())
}
