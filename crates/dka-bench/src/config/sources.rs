//! Where a grid's (or a run's) inputs are: each dataset's release folder, the backbone
//! weights, the device, the cache. The command line's `--data`, `--data-dir`, `--weights`,
//! `--device` and `--cache-dir`, resolved.
use crate::config::run::RunConfig;
use crate::util::device::DeviceArg;
use anyhow::bail;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `NAME=PATH` entries: a dataset's folder.
    pub data: Vec<String>,
    /// A folder holding one sub-folder per dataset name (for names not in `data`).
    pub data_dir: Option<PathBuf>,
    /// A weights file for every run, `none`, or `BACKBONE=FILE` entries.
    pub weights: Vec<String>,
    pub device: DeviceArg,
    /// The cache folder (file hashes; decoded images) [default: results/.cache].
    pub cache_dir: Option<PathBuf>,
}

impl Sources {
    /// The release folder of `dataset`.
    pub fn root(&self, dataset: &str) -> anyhow::Result<PathBuf> {
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
    pub fn resolve(&self, mut cfg: RunConfig) -> RunConfig {
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

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("results/.cache"))
    }

    /// The command-line words that give these sources to another `dka` process (a Slurm
    /// array task), without the device.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.data {
            out.extend(["--data".to_string(), d.clone()]);
        }
        if let Some(d) = &self.data_dir {
            out.extend(["--data-dir".to_string(), d.display().to_string()]);
        }
        for w in &self.weights {
            out.extend(["--weights".to_string(), w.clone()]);
        }
        if let Some(c) = &self.cache_dir {
            out.extend(["--cache-dir".to_string(), c.display().to_string()]);
        }
        out
    }
}
