//! The one trainer every method goes through. Method quirks are data the method returns
//! (`trains_backbone`, `frozen_features`, `backbone_lr`), never branches on the method's name.
//!
//! A run, stage by stage: resolve the config (every default written down in `config.json`),
//! write the split's manifest ([`data`]), build the model ([`model`]), fit it and select an
//! epoch ([`fit`], the loop; [`state`], its steps), save the selected epoch's trained
//! tensors, report its metrics ([`evaluate`], [`metrics`]). The run writes `log.txt` and
//! `metrics.csv` as it goes ([`log`]) and a checkpoint to resume from ([`checkpoint`]).
pub mod checkpoint;
pub mod data;
pub mod decoder;
pub mod eval_data;
pub mod evaluate;
pub mod feature_cache;
pub mod fit;
pub mod log;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod per_case;
pub mod precision;
pub mod state;
pub mod step;
pub mod trained;

use anyhow::Context;
use data::RunData;
use log::RunLog;
use model::Model;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn;
use tch::{Device, Tensor};

use crate::config::run::{RunConfig, Selection};
use crate::util::device::device_name;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Test metrics of the selected epoch (plus `selected_epoch`, `primary`,
    /// `trainable_params`, `skipped_steps`).
    pub metrics: BTreeMap<String, f64>,
    pub info: BTreeMap<String, String>,
}

/// A finished run keeps its final state (`checkpoint/`, what `--continue` goes on from) when
/// its tensors take at most this many bytes, or when asked ([`TrainOptions::keep_state`]):
/// adapters' states are kilobytes to megabytes, full fine-tuning's a gigabyte per ViT-B run.
pub const KEEP_STATE_BYTES: u64 = 256 << 20;

/// How a run is carried out, besides its config (nothing here changes its numbers).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOptions {
    /// TensorBoard event files in the run's folder.
    pub tensorboard: bool,
    /// Take a saved state made for fewer epochs on to the config's `epochs`.
    pub continuing: bool,
    /// Keep the final state even when it is larger than [`KEEP_STATE_BYTES`].
    pub keep_state: bool,
}

/// Runs one training run in `dir` (which must exist) on `data` (see [`RunData::open`]).
pub fn train(
    cfg: &RunConfig,
    data: &RunData,
    dir: &Path,
    device: Device,
    opts: TrainOptions,
) -> anyhow::Result<Outcome> {
    cfg.validate()?;
    let asked = cfg;
    let cfg = cfg.resolve(device)?;
    anyhow::ensure!(
        !data.split.train.is_empty() && !data.split.test.is_empty(),
        "{}: the split has no training or no test samples",
        cfg.dataset
    );
    // Everything that can fail on bad input (weights, images) comes before anything is
    // written into the run's folder.
    tch::manual_seed(cfg.seed as i64);
    let task = data.ds.task();
    let mut model = Model::build(
        &cfg,
        task.classes().len() as i64,
        task.is_segmentation(),
        device,
    )?;
    let init = match &cfg.init_from {
        Some(from) => {
            let adapter = if from.join("adapter").is_dir() {
                from.join("adapter")
            } else {
                from.clone()
            };
            let saved = dka_baselines::io::open(&adapter)
                .with_context(|| format!("init_from {}", from.display()))?;
            let (theirs, ours) = (saved.method.method().name(), cfg.method.method().name());
            anyhow::ensure!(
                theirs == ours,
                "init_from {}: saved by a {theirs} run; this run is {ours} (a warm start needs the \
                 same method and backbone)",
                from.display()
            );
            model
                .load_trained(&adapter)
                .with_context(|| format!("init_from {}", from.display()))?;
            Some(adapter)
        }
        None => None,
    };
    let splits = fit::open_splits(&cfg, data)?;
    let mut log = RunLog::start(dir, &cfg, device, opts.tensorboard)?;
    if let Some(a) = &init {
        log.say(&format!("warm start from {}", a.display()));
    }
    if asked.precision == crate::config::run::Precision::Auto {
        log.note(&format!(
            "precision auto: {}",
            crate::config::run::auto_precision(device).1
        ));
    }
    data.manifest.write(&dir.join("manifest.json"))?;
    log.note(&format!(
        "split (manifest.json, sha256 {}): {} train / {} val / {} test",
        &data.split_sha256[..16],
        data.split.train.len(),
        data.split.val.len(),
        data.split.test.len()
    ));
    if cfg.data_options.skip_bad {
        log.note(&format!(
            "skip_bad: {} unreadable or inconsistent file(s) skipped",
            data.ds.skipped().len()
        ));
    }
    log.note(&model.weights_report);
    for n in &splits.notes {
        log.note(n);
    }
    let fitted = fit::fit(
        &cfg,
        &model,
        data,
        splits,
        &mut log,
        dir,
        device,
        opts.continuing,
    )?;
    save(&cfg, &model, dir, &mut log)?;
    let state = checkpoint::size(dir);
    if state > KEEP_STATE_BYTES && !opts.keep_state {
        checkpoint::remove(dir);
        log.note(&format!(
            "final state ({:.0} MB) not kept: --keep-state keeps it for --continue",
            state as f64 / 1e6
        ));
    }

    let mut metrics = fitted.test.values();
    metrics.insert("selected_epoch".into(), fitted.selected_epoch as f64);
    metrics.insert("primary".into(), fitted.test.primary(model.segmentation));
    metrics.insert("trainable_params".into(), model.trainable_params() as f64);
    metrics.insert("skipped_steps".into(), fitted.skipped_steps as f64);
    let mut info = BTreeMap::new();
    info.insert("selection".into(), selection_name(cfg.selection).into());
    info.insert("train_samples".into(), data.split.train.len().to_string());
    info.insert("test_samples".into(), data.split.test.len().to_string());
    info.insert("device".into(), device_name(device));
    info.insert(
        "precision".into(),
        format!("{:?}", cfg.precision).to_lowercase(),
    );
    info.insert("backbone".into(), cfg.backbone.clone());
    info.insert("input".into(), cfg.input.source.clone().unwrap_or_default());
    info.insert(
        "test_evaluations".into(),
        fitted.test_evaluations.to_string(),
    );
    Ok(Outcome { metrics, info })
}

/// The selection rule as tables name it.
pub fn selection_name(s: Selection) -> &'static str {
    match s {
        Selection::Last => "last epoch",
        Selection::BestVal => "best validation epoch",
        Selection::BestTest => "best test epoch (authors' protocol)",
    }
}

/// Saves the (selected epoch's) trained tensors and, for learnable kernel sizes, the radii.
fn save(cfg: &RunConfig, model: &Model, dir: &Path, log: &mut RunLog) -> anyhow::Result<()> {
    if let Some(summary) = write_radii(cfg, &model.adapter_vs, &dir.join("radii.csv"))? {
        log.note(&summary);
    }
    let head: Vec<(String, Tensor)> = model.head_vs.variables().into_iter().collect();
    dka_baselines::io::save(
        &dir.join("adapter"),
        &cfg.method,
        &model.adapter_vs,
        &model.backbone_vs,
        &head,
    )?;
    Ok(())
}

/// DKA's learnable kernel sizes (Table 3b): the learned radius of every channel of every
/// module, as `radii.csv` (module, channel, init_radius, radius, moved), and a summary line of
/// how far they moved; nothing for other methods.
fn write_radii(
    cfg: &RunConfig,
    adapters: &nn::VarStore,
    path: &Path,
) -> anyhow::Result<Option<String>> {
    let dka_baselines::MethodConfig::Dka(dka) = &cfg.method else {
        return Ok(None);
    };
    let Some(l) = &dka.learnable_kernel else {
        return Ok(None);
    };
    let radii = dka_core::dka::learned_radii(adapters, dka);
    let mut w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
    w.write_record(["module", "channel", "init_radius", "radius", "moved"])?;
    let mut moved: Vec<f64> = Vec::new();
    for (module, values) in &radii {
        for (c, r) in values.iter().enumerate() {
            let m = r - l.init_radius;
            moved.push(m.abs());
            w.write_record([
                module.as_str(),
                &c.to_string(),
                &format!("{:.4}", l.init_radius),
                &format!("{r:.4}"),
                &format!("{m:+.4}"),
            ])?;
        }
    }
    w.flush()?;
    moved.sort_by(f64::total_cmp);
    let median = crate::util::stats::median(&moved).unwrap_or(0.0);
    let max = moved.last().copied().unwrap_or(0.0);
    Ok(Some(format!(
        "learnable kernel sizes: {} radii from {:.2} px moved by median {median:.3} px, at most {max:.3} px (radii.csv)",
        moved.len(),
        l.init_radius
    )))
}
