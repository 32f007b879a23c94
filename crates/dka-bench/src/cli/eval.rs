//! `dka eval`: a trained run's saved tensors evaluated on its own split.
use super::args::DataArgs;
use crate::config::run::RunConfig;
use crate::train::data::RunData;
use crate::util::device::pick;
use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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
pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg_path = a.run.join("config.json");
    let text =
        std::fs::read_to_string(&cfg_path).with_context(|| cfg_path.display().to_string())?;
    let cfg: RunConfig = a
        .data
        .sources()
        .resolve(serde_json::from_str(&text).with_context(|| cfg_path.display().to_string())?);
    let which = match a.split.as_str() {
        "test" => dka_data::SplitName::Test,
        "val" => dka_data::SplitName::Val,
        "train" => dka_data::SplitName::Train,
        other => bail!("--split {other}: use test, val or train"),
    };
    let device = pick(a.data.device)?;
    let cfg = cfg.resolve(device)?;
    let data = RunData::open(
        &cfg,
        &a.data.sources().root(&cfg.dataset)?,
        &a.data.sources().cache_dir(),
    )?;
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
    let metrics = crate::train::evaluate::evaluate_split(&cfg, &model, &data, which, device)?;
    for (k, v) in &metrics.values() {
        println!("{k}: {v:.6}");
    }
    Ok(())
}
