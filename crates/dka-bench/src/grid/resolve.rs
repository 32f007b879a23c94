//! Turning a grid's specs into runs ready to go: every dataset and split opened once, every
//! weights file hashed once, and each run's id computed from its identity (config, weights'
//! content, split's content: [`super::identity`]).
use super::identity::{file_sha256, run_identity};
use crate::config::run::RunConfig;
use crate::config::sources::Sources;
use crate::config::spec::RunSpec;
use crate::train::data::{open, split_spec, RunData};
use dka_data::Dataset;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Device;

/// A run ready to go: its config, its data, and how its weights are named in the tables.
pub struct Resolved {
    pub cfg: RunConfig,
    pub data: Arc<RunData>,
    pub weights_label: String,
}

/// Opens every dataset and split the grid needs (once each), hashes the weights, and gives
/// each run its id from its identity.
pub fn resolve_runs(
    specs: Vec<RunSpec>,
    sources: &Sources,
    device: Device,
) -> anyhow::Result<(Vec<RunSpec>, HashMap<String, Resolved>)> {
    let cache_dir = sources.cache_dir();
    let mut datasets: HashMap<String, Arc<dyn Dataset>> = HashMap::new();
    let mut splits: HashMap<String, Arc<RunData>> = HashMap::new();
    let mut hashes: HashMap<PathBuf, String> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    let mut planned = HashMap::new();
    let bar = crate::util::progress::bar(specs.len() as u64, "resolving runs");
    for spec in specs {
        let cfg = sources.resolve(serde_json::from_value(spec.config.clone())?);
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
                    &sources.root(&cfg.dataset)?,
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
            Resolved {
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
