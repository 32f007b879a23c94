//! `dka train` (one run from a TOML/JSON RunConfig) and `dka grid` (an experiment's grid:
//! checked, planned, resumable, shardable, then aggregated into the paper's table layout).
use crate::aggregate::{aggregate, PaperTable, TableSpec};
use crate::device::{pick, DeviceArg};
use crate::evaluate::{metric_names, SEGMENTATION};
use crate::experiment::{Experiment, Profile};
use crate::grid::{run_grid, runs_csv, GridOptions, RunResult, RunSpec, Shard};
use crate::identity::{file_sha256, run_identity};
use crate::run_config::RunConfig;
use crate::train::data::{open, split_spec, RunData};
use anyhow::{bail, Context};
use dka_data::Dataset;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

/// Where each dataset's release folder is, the weights, the device.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// A dataset's folder, `NAME=PATH` (repeatable), e.g. `--data busi-cls=~/data/Dataset_BUSI_with_GT`.
    #[arg(long = "data", value_name = "NAME=PATH")]
    data: Vec<String>,
    /// A folder holding one sub-folder per dataset name (used for names not given by --data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pretrained backbone weights (.safetensors) for every run, `none` for the
    /// random-initialisation control, or `BACKBONE=FILE` for the runs of one backbone
    /// (repeatable: `--weights resnet50=rad.safetensors --weights medsam_vit_b=medsam.safetensors`).
    #[arg(long, value_name = "FILE|none|BACKBONE=FILE")]
    weights: Vec<String>,
    /// auto (CUDA when usable, else CPU; logged), cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    device: DeviceArg,
    /// Cache folder (file hashes; decoded images), shared safely by concurrent runs
    /// [default: results/.cache].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl DataArgs {
    fn root(&self, dataset: &str) -> anyhow::Result<PathBuf> {
        for d in &self.data {
            let Some((name, path)) = d.split_once('=') else {
                bail!("--data {d}: expected NAME=PATH")
            };
            if name == dataset {
                return Ok(PathBuf::from(path));
            }
        }
        match &self.data_dir {
            Some(dir) => Ok(dir.join(dataset)),
            None => bail!(
                "no folder for dataset '{dataset}': pass --data {dataset}=PATH or --data-dir DIR"
            ),
        }
    }

    /// `cfg` with the command line's weights for its backbone, if given (a `BACKBONE=FILE`
    /// entry for its backbone first, then a plain one).
    fn resolve(&self, mut cfg: RunConfig) -> RunConfig {
        let keyed = |w: &String| -> Option<(String, String)> {
            let (k, v) = w.split_once('=')?;
            (!k.contains('/') && !k.is_empty()).then(|| (k.to_string(), v.to_string()))
        };
        let for_backbone = self
            .weights
            .iter()
            .find_map(|w| keyed(w).filter(|(k, _)| *k == cfg.backbone).map(|(_, v)| v));
        let plain = self.weights.iter().find(|w| keyed(w).is_none()).cloned();
        if let Some(w) = for_backbone.or(plain) {
            cfg.weights = Some(PathBuf::from(w));
        }
        cfg
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("results/.cache"))
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A RunConfig as TOML or JSON (fields: see `RunConfig`; omitted ones take defaults).
    config: PathBuf,
    /// The run's folder (config.json, manifest.json, metrics.csv, log.txt, adapter/).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    data: DataArgs,
}

fn read_run_config(path: &Path) -> anyhow::Result<RunConfig> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let cfg: RunConfig = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| path.display().to_string())?
    } else {
        toml::from_str(&text).with_context(|| path.display().to_string())?
    };
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    crate::interrupt::install()?;
    let cfg = a.data.resolve(read_run_config(&a.config)?);
    let device = pick(a.data.device)?;
    let data = RunData::open(&cfg, &a.data.root(&cfg.dataset)?, &a.data.cache_dir())
        .with_context(|| a.config.display().to_string())?;
    let created = !a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let out = match crate::train::train(&cfg, &data, &a.out, device) {
        Ok(o) => o,
        Err(e) => {
            // A run that failed before writing anything leaves no empty folder behind.
            if created && std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_none()) {
                let _ = std::fs::remove_dir(&a.out);
            }
            return Err(e.context(format!("the run of {}", a.config.display())));
        }
    };
    for (k, v) in &out.metrics {
        println!("{k}: {v:.6}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run's folder (`dka train --out`, or a grid's `runs/<id>`): its config.json and adapter/.
    run: PathBuf,
    /// Which split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    data: DataArgs,
}

/// `dka eval`: a trained run's saved tensors on its own split (the same split, rebuilt from its
/// config), metrics printed.
pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let cfg_path = a.run.join("config.json");
    let text =
        std::fs::read_to_string(&cfg_path).with_context(|| cfg_path.display().to_string())?;
    let cfg: RunConfig = a
        .data
        .resolve(serde_json::from_str(&text).with_context(|| cfg_path.display().to_string())?);
    let which = match a.split.as_str() {
        "test" => dka_data::SplitName::Test,
        "val" => dka_data::SplitName::Val,
        "train" => dka_data::SplitName::Train,
        other => bail!("--split {other}: use test, val or train"),
    };
    let device = pick(a.data.device)?;
    let cfg = cfg.resolve(device)?;
    let data = RunData::open(&cfg, &a.data.root(&cfg.dataset)?, &a.data.cache_dir())?;
    anyhow::ensure!(
        data.split_sha256 == crate::train::data::manifest_of(&a.run)?,
        "{}: the data at hand is not the data this run was trained on (its manifest.json differs)",
        a.run.display()
    );
    let task = data.ds.task();
    // The trainer's seed: a random-init backbone (weights none) is rebuilt identically.
    tch::manual_seed(cfg.seed as i64);
    let mut model = crate::train::model::Model::build(
        &cfg,
        task.classes().len() as i64,
        task.is_segmentation(),
        device,
    )?;
    model.load_trained(&a.run.join("adapter"))?;
    let metrics = crate::train::evaluate_split(&cfg, &model, &data, which, device)?;
    for (k, v) in &metrics.values() {
        println!("{k}: {v:.6}");
    }
    Ok(())
}

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
struct Planned {
    cfg: RunConfig,
    data: Arc<RunData>,
    weights_label: String,
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
fn plan(
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
            out: &out,
            tasks: n,
            runs: specs.len(),
            device: a.data.device,
            forward: &fwd,
        };
        let script = crate::slurm::emit(&a.slurm, &job)?;
        println!(
            "wrote {}: {n} array task(s) for {} run(s); submit with `sbatch {}`",
            script.display(),
            specs.len(),
            script.display()
        );
        if n > specs.len() {
            eprintln!(
                "note: {} of the {n} tasks have no run to do (the grid has {})",
                n - specs.len(),
                specs.len()
            );
        }
        return Ok(());
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
        row_order: axis_order(&specs, &exp.rows),
        col_axes: exp.columns.clone(),
        col_orders: exp.columns.iter().map(|c| axis_order(&specs, c)).collect(),
        paper: paper.as_ref(),
        notes,
        profile: a.profile.clone(),
    };
    aggregate(&out, &table, &current, records.len() - current.len())?;
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
        &out,
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

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Experiment files (experiments/*.toml); their plans are summed.
    #[arg(required = true)]
    experiments: Vec<PathBuf>,
    #[command(flatten)]
    opts: PlanOptions,
}

#[derive(clap::Args, Clone)]
pub struct PlanOptions {
    /// Profile of the experiments.
    #[arg(long)]
    profile: Option<String>,
    /// Output folder of the grid (to see which runs are done; plan.csv goes there).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Timed steps per distinct model.
    #[arg(long, default_value_t = 2)]
    plan_steps: usize,
    #[command(flatten)]
    data: DataArgs,
}

/// Seconds to decode one sample of `ds` (a few samples timed).
fn decode_seconds(ds: &dyn Dataset, indices: &[usize]) -> f64 {
    let take: Vec<usize> = indices.iter().copied().take(4).collect();
    if take.is_empty() {
        return 0.0;
    }
    let t = std::time::Instant::now();
    let ok = take.iter().filter(|&&i| ds.read(i).is_ok()).count().max(1);
    t.elapsed().as_secs_f64() / ok as f64
}

/// The sizes of a planned run's splits and the decoding its uncached splits still need.
fn measured_sizes(
    p: &Planned,
    decode_s: &mut HashMap<String, f64>,
) -> anyhow::Result<crate::plan::Sizes> {
    let task = p.data.ds.task();
    let spec = p.cfg.input_spec()?;
    let pre = crate::train::data::preprocess(&p.cfg, &spec);
    let per_image = *decode_s
        .entry(p.cfg.dataset.clone())
        .or_insert_with(|| decode_seconds(p.data.ds.as_ref(), &p.data.split.train));
    let mut decode = 0.0;
    for which in [
        dka_data::SplitName::Train,
        dka_data::SplitName::Val,
        dka_data::SplitName::Test,
    ] {
        let idx = p.data.indices(which);
        if idx.is_empty() {
            continue;
        }
        let key = dka_data::CacheKey::new(p.data.ds.as_ref(), idx, &pre, &p.data.manifest)?;
        if !p
            .data
            .cache_dir
            .join(key.short())
            .join("meta.json")
            .is_file()
        {
            decode += idx.len() as f64 * per_image;
        }
    }
    Ok(crate::plan::Sizes {
        train: p.data.split.train.len(),
        val: p.data.split.val.len(),
        test: p.data.split.test.len(),
        classes: task.classes().len() as i64,
        segmentation: task.is_segmentation(),
        decode_s: decode,
        nominal: false,
    })
}

/// Plans (and times) the runs of several grids still to do.
fn plan_grids(exps: &[(&Path, Experiment)], a: &PlanOptions, device: Device) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let (mut total, mut done) = (0, 0);
    for (path, exp) in exps {
        let specs = exp.runs(a.profile.as_deref())?;
        total += specs.len();
        let configs: Vec<RunConfig> = specs
            .iter()
            .map(|s| Ok(a.data.resolve(serde_json::from_value(s.config.clone())?)))
            .collect::<anyhow::Result<_>>()?;
        let have_data = configs
            .iter()
            .all(|c| a.data.root(&c.dataset).is_ok_and(|r| r.is_dir()));
        let mut todo: Vec<(RunConfig, crate::plan::Sizes)> = Vec::new();
        if have_data {
            let out = a.out.clone().unwrap_or_else(|| {
                PathBuf::from("results").join(match &a.profile {
                    Some(p) => format!("{}-{p}", exp.name),
                    None => exp.name.clone(),
                })
            });
            let (specs, planned) = plan(specs, &a.data, device)?;
            let mut decode = HashMap::new();
            for s in &specs {
                let dir = out.join("runs").join(&s.id);
                if runs_csv::read_record(&dir).is_some_and(|r| r.status == runs_csv::Status::Ok) {
                    done += 1;
                    continue;
                }
                let p = &planned[&s.id];
                todo.push((p.cfg.clone(), measured_sizes(p, &mut decode)?));
            }
        } else {
            tracing::warn!(
                "{}: some dataset folders are absent; planning with the releases' nominal sizes",
                path.display()
            );
            for c in configs {
                let sizes = crate::plan::nominal_sizes(&c)?;
                todo.push((c, sizes));
            }
        }
        rows.extend(crate::plan::estimate(
            &exp.name,
            &todo,
            device,
            a.plan_steps,
        )?);
    }
    let out = match (&a.out, exps.len()) {
        (Some(o), _) => Some(o.join("plan.csv")),
        _ => None,
    };
    crate::plan::report(&rows, device, total, done, out.as_deref())
}

/// `dka plan EXP...`: the runs of the grids still to do and their estimated time here.
pub fn plan_cmd(a: PlanArgs) -> anyhow::Result<()> {
    let exps: Vec<(&Path, Experiment)> = a
        .experiments
        .iter()
        .map(|p| Ok((p.as_path(), Experiment::load(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let device = pick(a.opts.data.device)?;
    plan_grids(&exps, &a.opts, device)
}
