//! Loading `.safetensors` weights by timm names, with a report of what happened.
//!
//! Every load says which keys were loaded, which the model has but the file lacks (missing),
//! which the file has but the model does not use (unused), and which differ in shape. It fails
//! with the offending names unless the only differences are the classification head (a new
//! task's head is expected to differ from the checkpoint's).
use crate::convert::{self, SourceFormat};
use crate::error::{CoreError, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    pub source_format: String,
    pub loaded: Vec<String>,
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    /// (name, shape in the model, shape in the file)
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    /// Everything that is neither loaded nor a head difference, one phrase per kind.
    fn problems(&self, head_prefix: &str) -> Vec<String> {
        let not_head = |n: &&String| !n.starts_with(head_prefix);
        let list = |what: &str, names: Vec<String>| -> Option<String> {
            let shown = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
            let more = if names.len() > 4 {
                format!(", ... {} more", names.len() - 4)
            } else {
                String::new()
            };
            (!names.is_empty()).then(|| format!("{} {what} ({shown}{more})", names.len()))
        };
        let missing = self.missing.iter().filter(not_head).cloned().collect();
        let unused = self.unused.iter().filter(not_head).cloned().collect();
        let shapes = self
            .mismatched
            .iter()
            .filter(|(n, _, _)| !n.starts_with(head_prefix))
            .map(|(n, m, f)| format!("{n}: model {m:?}, file {f:?}"))
            .collect();
        [
            list("missing from the file", missing),
            list("unused by the model", unused),
            list("of another shape", shapes),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} loaded, {} missing, {} unused, {} shape mismatches (source: {})",
            self.loaded.len(),
            self.missing.len(),
            self.unused.len(),
            self.mismatched.len(),
            self.source_format
        )
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(CoreError::Io {
            path: path.into(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    Tensor::read_safetensors(path).map_err(|e| CoreError::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })
}

/// A checkpoint read from disk, its names already timm's.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: std::path::PathBuf,
    pub format: SourceFormat,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads `path` and renames its keys with [`convert::to_timm`].
    pub fn read(path: &Path) -> Result<Self> {
        let (tensors, format) = convert::to_timm(read_safetensors(path)?);
        Ok(Self {
            path: path.into(),
            format,
            tensors: tensors.into_iter().collect(),
        })
    }

    /// Number of classes of the head stored under `head_prefix`, if the checkpoint has one.
    pub fn head_classes(&self, head_prefix: &str) -> Option<i64> {
        self.tensors
            .get(&format!("{head_prefix}weight"))
            .map(|w| w.size()[0])
    }
}

/// Reads `path` and loads it into `vs`; see [`load_checkpoint`].
pub fn load_into(vs: &mut VarStore, path: &Path, head_prefix: &str) -> Result<LoadReport> {
    load_checkpoint(vs, &Checkpoint::read(path)?, head_prefix)
}

/// Copies a checkpoint's tensors into `vs`. Differences under `head_prefix` are reported but
/// allowed; anything else is an error that names the keys, and then nothing is copied.
pub fn load_checkpoint(
    vs: &mut VarStore,
    ckpt: &Checkpoint,
    head_prefix: &str,
) -> Result<LoadReport> {
    let (path, format, file) = (ckpt.path.as_path(), ckpt.format, &ckpt.tensors);
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport {
        source_format: format.to_string(),
        ..Default::default()
    };
    for (name, var) in &vars {
        match file.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.size() != var.size() => {
                report.mismatched.push((name.clone(), var.size(), t.size()))
            }
            Some(_) => report.loaded.push(name.clone()),
        }
    }
    report.unused = file
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .cloned()
        .collect();
    let problems = report.problems(head_prefix);
    if !problems.is_empty() {
        return Err(CoreError::WeightsMismatch {
            path: path.into(),
            summary: problems.join("; "),
        });
    }
    tch::no_grad(|| {
        for name in &report.loaded {
            let mut var = vars[name].shallow_clone();
            var.copy_(&file[name].to_kind(Kind::Float).to_device(var.device()));
        }
    });
    if format != SourceFormat::Timm {
        tracing::info!(
            "{}: renamed {} checkpoint keys to timm's",
            path.display(),
            format
        );
    }
    Ok(report)
}
