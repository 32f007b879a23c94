//! `dka train`: one run from a TOML or JSON RunConfig.
use super::args::DataArgs;
use crate::config::run::RunConfig;
use crate::train::data::RunData;
use crate::util::device::pick;
use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
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

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::util::interrupt::install()?;
    let cfg = a.data.sources().resolve(read_run_config(&a.config)?);
    let device = pick(a.data.device)?;
    let data = RunData::open(
        &cfg,
        &a.data.sources().root(&cfg.dataset)?,
        &a.data.sources().cache_dir(),
    )
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
