//! A finished run opened for use: its resolved config, its task (classes) from its manifest,
//! and its model with the trained tensors loaded. What `dka eval`, `dka predict` and
//! `dka export` start from.
use super::model::Model;
use crate::config::run::RunConfig;
use anyhow::Context;
use dka_data::{Manifest, Task};
use std::path::{Path, PathBuf};
use tch::Device;

/// A trained run, ready to evaluate, predict or export.
pub struct TrainedRun {
    pub dir: PathBuf,
    /// The run's config, resolved for the device it is opened on.
    pub cfg: RunConfig,
    pub task: Task,
    pub model: Model,
    /// The content hash of the run's manifest (the data it trained on).
    pub manifest_sha256: String,
    /// The method's tensors at initialisation, by name.
    pub init_adapter: std::collections::BTreeMap<String, tch::Tensor>,
}

/// `path`, relative and not found from the current folder, under the nearest folder that holds
/// the run `dir` and has it; `None` when the path is absolute, found as it is, or nowhere above.
fn found_above(dir: &Path, path: &Path) -> Option<PathBuf> {
    if path.is_absolute() || path.exists() || path.as_os_str().is_empty() {
        return None;
    }
    let dir = dir.canonicalize().ok()?;
    dir.ancestors().map(|a| a.join(path)).find(|c| c.exists())
}

impl TrainedRun {
    /// Opens the run in `dir` (a `dka train --out` folder or a grid's `runs/<id>`): its
    /// `config.json`, `manifest.json` and `adapter/`. `weights` replaces the backbone weights
    /// file the config names (moved since, or on another machine). A random-init backbone
    /// (`weights = none`) is rebuilt from the run's seed, as it trained. A relative backbone
    /// config or weights path that is not found from the current folder is looked up under the
    /// folders above `dir` (where a grid ran).
    pub fn open(dir: &Path, device: Device, weights: Option<&Path>) -> anyhow::Result<Self> {
        Self::open_with(dir, device, |mut cfg| {
            if let Some(w) = weights {
                cfg.weights = Some(w.to_path_buf());
            }
            cfg
        })
    }

    /// [`Self::open`], the config read from `dir` passed through `adjust` first (the command
    /// line's `--weights`, in any of its forms).
    pub fn open_with(
        dir: &Path,
        device: Device,
        adjust: impl FnOnce(RunConfig) -> RunConfig,
    ) -> anyhow::Result<Self> {
        let cfg_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&cfg_path).with_context(|| cfg_path.display().to_string())?;
        let cfg: RunConfig =
            serde_json::from_str(&text).with_context(|| cfg_path.display().to_string())?;
        let mut cfg = adjust(cfg);
        // Paths the run recorded relative to where it trained (a grid's runs: usually the
        // repository root), opened from another folder.
        if dka_core::BackboneConfig::preset(&cfg.backbone).is_none() {
            if let Some(p) = found_above(dir, Path::new(&cfg.backbone)) {
                tracing::info!("backbone config {} found at {}", cfg.backbone, p.display());
                cfg.backbone = p.display().to_string();
            }
        }
        let weights_above = cfg
            .weights_file()
            .and_then(|w| Some((w.display().to_string(), found_above(dir, w)?)));
        if let Some((recorded, p)) = weights_above {
            tracing::info!("backbone weights {recorded} found at {}", p.display());
            cfg.weights = Some(p);
        }
        if let Some(w) = cfg.weights_file() {
            anyhow::ensure!(
                w.is_file(),
                "{}: the run's backbone weights {} are not there: pass --weights FILE",
                dir.display(),
                w.display()
            );
        }
        let manifest = Manifest::load(&dir.join("manifest.json"))
            .with_context(|| format!("{}: not a finished run", dir.display()))?;
        let manifest_sha256 = manifest.content_hash();
        let cfg = cfg.resolve(device)?;
        // The trainer's seed: a random-init backbone (weights none) is rebuilt identically.
        tch::manual_seed(cfg.seed as i64);
        let task = manifest.task.clone();
        let mut model = Model::build(
            &cfg,
            task.classes().len() as i64,
            task.is_segmentation(),
            device,
        )?;
        // The method's tensors as initialised (the run's seed rebuilds them), for comparisons
        // with the trained ones (`dka inspect`).
        let init_adapter = model
            .adapter_vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        model.load_trained(&dir.join("adapter"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            task,
            model,
            manifest_sha256,
            init_adapter,
        })
    }

    pub fn classes(&self) -> &[String] {
        self.task.classes()
    }

    pub fn segmentation(&self) -> bool {
        self.task.is_segmentation()
    }
}

#[cfg(test)]
mod tests {
    use super::found_above;

    /// A grid's run records `.assets/...` relative to the repository root: opened from another
    /// folder, the path is found above the run; absolute, present or unknown paths stay.
    #[test]
    fn a_relative_path_is_found_above_the_run() {
        let root = tempfile::tempdir().unwrap();
        let rel = std::path::Path::new(".assets-found-above-test/w.safetensors");
        std::fs::create_dir_all(root.path().join(rel).parent().unwrap()).unwrap();
        std::fs::write(root.path().join(rel), b"x").unwrap();
        let run = root.path().join("results/demo/runs/0123");
        std::fs::create_dir_all(&run).unwrap();
        let found = found_above(&run, rel).unwrap();
        assert_eq!(found, root.path().canonicalize().unwrap().join(rel));
        assert_eq!(
            found_above(&run, std::path::Path::new("not/there.safetensors")),
            None
        );
        assert_eq!(
            found_above(&run, &found),
            None,
            "an absolute path stays as it is"
        );
        assert_eq!(
            found_above(&run, std::path::Path::new("Cargo.toml")),
            None,
            "found from here"
        );
    }
}
