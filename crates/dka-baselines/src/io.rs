//! Saving and loading what a method trained, on its own (a few MB, not the backbone).
//!
//! Our format is a folder with `method.json` (the [`MethodConfig`]) and `adapter.safetensors`:
//! the method's own tensors under their names (`blocks.0.dka.down.weight`), trained backbone
//! tensors (BitFit's biases, full fine-tuning's everything) under `backbone.<timm name>`, and
//! any extra tensors the caller adds (a task head) under the names it gives. A peft LoRA folder
//! (`adapter_config.json`) opens through the same [`open`].
use crate::{peft, MethodConfig};
use dka_core::{CoreError, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::Tensor;

pub const BACKBONE_PREFIX: &str = "backbone.";

/// A saved adapter: its method and tensors.
#[derive(Debug)]
pub struct Saved {
    pub method: MethodConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

fn io_err(path: &Path, err: std::io::Error) -> CoreError {
    CoreError::Io {
        path: path.into(),
        err,
    }
}

/// Writes `method.json` and `adapter.safetensors` into `dir` (through temporary files).
pub fn save(
    dir: &Path,
    method: &MethodConfig,
    adapters: &VarStore,
    backbone: &VarStore,
    extra: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let m = method.method();
    let mut out: Vec<(String, Tensor)> = adapters
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    out.extend(
        backbone
            .variables()
            .into_iter()
            .filter(|(n, _)| m.trains_backbone(n))
            .map(|(n, t)| (format!("{BACKBONE_PREFIX}{n}"), t.detach())),
    );
    out.extend(extra.iter().map(|(n, t)| (n.clone(), t.detach())));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let out: Vec<(String, Tensor)> = out
        .into_iter()
        .map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    let wpath = dir.join("adapter.safetensors");
    let tmp = dir.join("adapter.safetensors.partial");
    Tensor::write_safetensors(&out, &tmp).map_err(|e| CoreError::Safetensors {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    std::fs::rename(&tmp, &wpath).map_err(|e| io_err(&wpath, e))?;
    let mpath = dir.join("method.json");
    std::fs::write(
        &mpath,
        serde_json::to_string_pretty(method).expect("method serialises"),
    )
    .map_err(|e| io_err(&mpath, e))
}

/// Opens one of our adapter folders or a peft LoRA folder.
pub fn open(dir: &Path) -> Result<Saved> {
    if dir.join("adapter_config.json").is_file() {
        let (cfg, tensors) = peft::read(dir)?;
        return Ok(Saved {
            method: MethodConfig::Lora(cfg),
            tensors,
        });
    }
    let mpath = dir.join("method.json");
    if !mpath.is_file() {
        return Err(CoreError::Config {
            path: dir.into(),
            message: "neither method.json (dka) nor adapter_config.json (peft) is here".into(),
        });
    }
    let text = std::fs::read_to_string(&mpath).map_err(|e| io_err(&mpath, e))?;
    let method = serde_json::from_str(&text).map_err(|e| CoreError::Config {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    let tensors = dka_core::weights::read_safetensors(&dir.join("adapter.safetensors"))?
        .into_iter()
        .collect();
    Ok(Saved { method, tensors })
}

/// Copies saved tensors into the method's store and the backbone's. Every tensor of the
/// method's store must be in the file with its shape, and every file tensor must have a place
/// (names listed in `extra` are left for the caller).
pub fn apply(
    saved: &Saved,
    path: &Path,
    adapters: &mut VarStore,
    backbone: &mut VarStore,
    extra: &[&str],
) -> Result<()> {
    let avars = adapters.variables();
    let bvars = backbone.variables();
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for (name, t) in &saved.tensors {
        if extra.contains(&name.as_str()) {
            continue;
        }
        let target = match name.strip_prefix(BACKBONE_PREFIX) {
            Some(b) => bvars.get(b),
            None => avars.get(name),
        };
        match target {
            None => problems.push(format!("unused {name}")),
            Some(v) if v.size() != t.size() => {
                problems.push(format!("{name}: model {:?}, file {:?}", v.size(), t.size()))
            }
            Some(v) => pairs.push((v.shallow_clone(), t)),
        }
    }
    problems.extend(
        avars
            .keys()
            .filter(|n| !saved.tensors.contains_key(*n))
            .map(|n| format!("missing {n}")),
    );
    if !problems.is_empty() {
        problems.sort();
        let shown = problems
            .iter()
            .take(6)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CoreError::WeightsMismatch {
            path: path.into(),
            summary: format!(
                "{shown}{}",
                if problems.len() > 6 {
                    format!(" ... {} more", problems.len() - 6)
                } else {
                    String::new()
                }
            ),
        });
    }
    tch::no_grad(|| {
        for (mut v, t) in pairs {
            v.copy_(&t.to_device(v.device()));
        }
    });
    Ok(())
}
