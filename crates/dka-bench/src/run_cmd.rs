//! `dka train` (one run from a TOML/JSON RunConfig) and `dka eval` (a trained run on its split),
//! and the data/weights/device arguments every run command shares. `dka grid` is in
//! [`crate::grid_cmd`], `dka plan` in [`crate::plan_cmd`].
use crate::device::{pick, DeviceArg};
use crate::run_config::RunConfig;
use crate::train::data::RunData;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Where each dataset's release folder is, the weights, the device.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// A dataset's folder, `NAME=PATH` (repeatable), e.g. `--data busi-cls=~/data/Dataset_BUSI_with_GT`.
    #[arg(long = "data", value_name = "NAME=PATH")]
    pub(crate) data: Vec<String>,
    /// A folder holding one sub-folder per dataset name (used for names not given by --data).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Pretrained backbone weights (.safetensors) for every run, `none` for the
    /// random-initialisation control, or `BACKBONE=FILE` for the runs of one backbone
    /// (repeatable: `--weights resnet50=rad.safetensors --weights medsam_vit_b=medsam.safetensors`).
    #[arg(long, value_name = "FILE|none|BACKBONE=FILE")]
    pub(crate) weights: Vec<String>,
    /// auto (CUDA when usable, else CPU; logged), cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub(crate) device: DeviceArg,
    /// Cache folder (file hashes; decoded images), shared safely by concurrent runs
    /// [default: results/.cache].
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
}

impl DataArgs {
    pub(crate) fn root(&self, dataset: &str) -> anyhow::Result<PathBuf> {
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
    pub(crate) fn resolve(&self, mut cfg: RunConfig) -> RunConfig {
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

    pub(crate) fn cache_dir(&self) -> PathBuf {
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
