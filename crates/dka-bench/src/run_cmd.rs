//! `dka train` (one run from a TOML/JSON RunConfig) and `dka grid` (an experiment's grid:
//! resumable, shardable, then aggregated into the paper's table layout).
use crate::aggregate::{aggregate, PaperTable};
use crate::device::{pick, DeviceArg};
use crate::experiment::Experiment;
use crate::grid::{emit_slurm, run_grid, GridOptions, RunResult, Shard};
use crate::run_config::RunConfig;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where each dataset's release folder is.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// A dataset's folder, `NAME=PATH` (repeatable), e.g. `--data busi-cls=~/data/Dataset_BUSI_with_GT`.
    #[arg(long = "data", value_name = "NAME=PATH")]
    data: Vec<String>,
    /// A folder holding one sub-folder per dataset name (used for names not given by --data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pretrained backbone weights (.safetensors), for every run.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
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

    fn resolve(&self, mut cfg: RunConfig) -> RunConfig {
        if self.weights.is_some() {
            cfg.weights.clone_from(&self.weights);
        }
        cfg
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A RunConfig as TOML or JSON (fields: see `RunConfig`; omitted ones take defaults).
    config: PathBuf,
    /// The run's folder (config.json, manifest.json, metrics.csv, adapter/).
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
    let cfg = a.data.resolve(read_run_config(&a.config)?);
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let out = crate::train::train(
        &cfg,
        &a.data.root(&cfg.dataset)?,
        &a.out,
        pick(a.data.device)?,
    )?;
    for (k, v) in &out.metrics {
        println!("{k}: {v:.4}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct GridArgs {
    /// An experiment file (experiments/*.toml).
    experiment: PathBuf,
    /// Profile of the experiment (e.g. `quick`: tiny backbone, few epochs).
    #[arg(long)]
    profile: Option<String>,
    /// Output folder (default results/<experiment name>[-<profile>]).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only shard I of N (`I/N`, 0-based I): shards run separately cover the grid once.
    #[arg(long)]
    shard: Option<String>,
    /// List the runs without running them.
    #[arg(long)]
    dry_run: bool,
    /// Write an sbatch job-array script with N shards instead of running.
    #[arg(long, value_name = "N")]
    emit_slurm: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

pub fn grid(a: GridArgs) -> anyhow::Result<()> {
    let exp = Experiment::load(&a.experiment)?;
    let specs = exp.runs(a.profile.as_deref())?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(match &a.profile {
            Some(p) => format!("{}-{p}", exp.name),
            None => exp.name.clone(),
        })
    });
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    if let Some(n) = a.emit_slurm {
        let script = out.join("grid.sbatch");
        let mut extra = String::new();
        if let Some(p) = &a.profile {
            extra += &format!(" --profile {p}");
        }
        for d in &a.data.data {
            extra += &format!(" --data {d}");
        }
        if let Some(d) = &a.data.data_dir {
            extra += &format!(" --data-dir {}", d.display());
        }
        if let Some(w) = &a.data.weights {
            extra += &format!(" --weights {}", w.display());
        }
        extra += &format!(" --out {}", out.display());
        emit_slurm(&script, &a.experiment, n, extra.trim())?;
        println!("wrote {}", script.display());
        return Ok(());
    }
    let shard = a.shard.as_deref().map(str::parse::<Shard>).transpose()?;
    let opts = GridOptions {
        shard,
        dry_run: a.dry_run,
    };
    let device = pick(a.data.device)?;
    let bar = crate::progress::bar(specs.len() as u64, "runs");
    let mut run_one = |spec: &crate::grid::RunSpec, dir: &Path| -> anyhow::Result<RunResult> {
        let cfg: RunConfig = serde_json::from_value(spec.config.clone())?;
        let cfg = a.data.resolve(cfg);
        let root = a.data.root(&cfg.dataset)?;
        let o = crate::train::train(&cfg, &root, dir, device)?;
        bar.inc(1);
        let mut info: BTreeMap<String, String> = o.info;
        info.insert(
            "weights".into(),
            cfg.weights
                .as_ref()
                .map(|w| w.display().to_string())
                .unwrap_or_else(|| "random".into()),
        );
        Ok(RunResult {
            metrics: o.metrics,
            info,
        })
    };
    let summary = run_grid(&out, &specs, &opts, &mut run_one)?;
    bar.finish_and_clear();
    tracing::info!("{}: {summary:?}", out.display());
    if a.dry_run {
        return Ok(());
    }
    let order = |axis: &str| -> Vec<String> {
        let mut seen = Vec::new();
        for s in &specs {
            if let Some(v) = s.axes.get(axis) {
                if !seen.contains(v) {
                    seen.push(v.clone());
                }
            }
        }
        seen
    };
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
    let col_orders: Vec<Vec<String>> = exp.columns.iter().map(|c| order(c)).collect();
    aggregate(
        &out,
        &exp.metric,
        &exp.rows,
        &order(&exp.rows),
        &exp.columns,
        &col_orders,
        paper.as_ref(),
    )?;
    crate::plot::plot(
        &out,
        exp.plot,
        &exp.title,
        &exp.metric,
        &exp.rows,
        &exp.columns,
    )?;
    std::fs::write(
        out.join("experiment.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "experiment": a.experiment, "profile": a.profile, "title": exp.title, "metric": exp.metric,
            "machine": crate::info::machine(),
        }))?,
    )?;
    println!(
        "{}: {} runs finished now, {} already done, {} failed; table: {}",
        exp.name,
        summary.finished,
        summary.skipped_already_done,
        summary.failed.len(),
        out.join("table.md").display()
    );
    if !summary.failed.is_empty() {
        bail!(
            "{} run(s) failed: {}",
            summary.failed.len(),
            summary
                .failed
                .iter()
                .map(|(id, e)| format!("{id}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}
