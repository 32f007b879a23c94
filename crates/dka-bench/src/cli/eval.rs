//! `dka eval`: a trained run's saved tensors evaluated on its own split or on external data
//! with its classes, pooled metrics printed, per-case scores on request.
use super::args::DataArgs;
use crate::train::eval_data::EvalData;
use crate::train::evaluate::{evaluate_each, EvalSetup};
use crate::train::trained::TrainedRun;
use crate::util::device::pick;
use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  dka eval results/my-run                                   # the run's test split
  dka eval results/my-run --per-case out/cases.csv          # + one row per image, out/summary.json
  dka eval results/my-run --data busi-seg=~/external/BUSI   # every image of an external set

Data: the run's dataset at the folder --data (or --data-dir) gives it. When that is the data the
run trained on (its manifest.json matches), the run's own split is evaluated (--split); any
other dataset with the run's classes (same names in any order, or as many classes, matched by
position and said so) is evaluated whole, as external data. --dataset NAME picks which --data
entry to evaluate when several are given.")]
pub struct Args {
    /// A run's folder (`dka train --out`, or a grid's `runs/<id>`): its config.json and adapter/.
    run: PathBuf,
    /// Which split of the run's own data: test (default), val or train.
    #[arg(long)]
    split: Option<String>,
    /// The dataset to evaluate, one of the --data names [default: the run's dataset, else the
    /// only --data entry].
    #[arg(long)]
    dataset: Option<String>,
    /// Write one row per image (per volume case for volume datasets) to this CSV, and
    /// summary.json beside it (per-case means, pooled metrics).
    #[arg(long, value_name = "FILE.csv")]
    per_case: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

/// Which dataset the arguments name.
fn dataset_name(a: &Args, run_dataset: &str) -> anyhow::Result<String> {
    if let Some(d) = &a.dataset {
        return Ok(d.clone());
    }
    let names: Vec<&str> = a
        .data
        .data
        .iter()
        .filter_map(|d| d.split_once('=').map(|(n, _)| n))
        .collect();
    Ok(match names.as_slice() {
        _ if names.contains(&run_dataset) => run_dataset.to_string(),
        [one] => one.to_string(),
        [] => run_dataset.to_string(),
        many => bail!("--data names {many:?}: pick the one to evaluate with --dataset NAME"),
    })
}

/// `dka eval`: pooled metrics printed (`name: value`), per-case rows when asked.
pub fn run(a: Args) -> anyhow::Result<()> {
    let which = match a.split.as_deref() {
        None => None,
        Some("test") => Some(dka_data::SplitName::Test),
        Some("val") => Some(dka_data::SplitName::Val),
        Some("train") => Some(dka_data::SplitName::Train),
        Some(other) => bail!("--split {other}: use test, val or train"),
    };
    let device = pick(a.data.device)?;
    let sources = a.data.sources();
    let run = TrainedRun::open_with(&a.run, device, |cfg| sources.resolve(cfg))?;
    let cfg = &run.cfg;
    let name = dataset_name(&a, &cfg.dataset)?;
    let data = EvalData::open(
        cfg,
        &run.task,
        &run.manifest_sha256,
        &name,
        &sources.root(&name)?,
        &sources.cache_dir(),
        which,
    )
    .with_context(|| format!("evaluating {}", a.run.display()))?;
    if let Some(note) = &data.class_note {
        tracing::warn!("{note}");
    }
    tracing::info!("evaluating {}", data.describe());
    let spec = cfg.input_spec()?;
    let pre = crate::train::data::preprocess(cfg, &spec);
    let split = data.decoded(&pre, cfg.loader_threads.max(1))?;
    let mut setup = EvalSetup::new(cfg, run.classes().len() as i64, device)?;
    setup.remap = data.remap.clone();
    let order = (0..split.len()).collect();
    let loader = crate::train::data::eval_loader(&split, order, cfg)?;
    let mut each = Vec::new();
    let want_cases = a.per_case.is_some();
    let (metrics, _) = evaluate_each(
        &run.model,
        loader,
        &split,
        &setup,
        want_cases.then_some(&mut each),
    )?;
    for (k, v) in &metrics.values() {
        println!("{k}: {v:.6}");
    }
    if let Some(path) = &a.per_case {
        let t = crate::train::per_case::table(
            &each,
            run.classes(),
            &|pos| data.case_name(pos),
            data.has_cases(),
        );
        let about = serde_json::json!({
            "run": a.run.display().to_string(),
            "method": cfg.method,
            "backbone": cfg.backbone,
            "data": data.describe(),
            "dataset": data.ds.name(),
            "root": data.ds.root().display().to_string(),
            "external": data.split.is_none(),
            "split": data.split.map(|s| s.as_str()),
            "manifest_sha256": data.manifest.content_hash(),
            "classes": run.classes(),
            "class_note": data.class_note,
            "device": crate::util::device::device_name(device),
        });
        let summary = crate::train::per_case::write(&t, &metrics, run.segmentation(), path, about)?;
        eprintln!(
            "{} rows ({}) in {}; means and pooled metrics in {}",
            t.rows.len(),
            t.row_is,
            path.display(),
            summary.display()
        );
    }
    Ok(())
}
