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
    /// Everything that is neither loaded nor a head difference.
    fn problems(&self, head_prefix: &str) -> Vec<String> {
        let not_head = |n: &String| !n.starts_with(head_prefix);
        let mut p: Vec<String> = Vec::new();
        p.extend(self.missing.iter().filter(|n| not_head(n)).map(|n| format!("missing {n}")));
        p.extend(self.unused.iter().filter(|n| not_head(n)).map(|n| format!("unused {n}")));
        p.extend(
            self.mismatched
                .iter()
                .filter(|(n, _, _)| not_head(n))
                .map(|(n, m, f)| format!("{n}: model {m:?} vs file {f:?}")),
        );
        p
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
        return Err(CoreError::Io { path: path.into(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file") });
    }
    Tensor::read_safetensors(path).map_err(|e| CoreError::Safetensors { path: path.into(), message: e.to_string() })
}

/// Copies the tensors of `path` (renamed to timm's names by [`convert::to_timm`]) into `vs`.
/// Differences under `head_prefix` are reported but allowed; anything else is an error that
/// names the keys, and then nothing is copied.
pub fn load_into(vs: &mut VarStore, path: &Path, head_prefix: &str) -> Result<LoadReport> {
    let (tensors, format) = convert::to_timm(read_safetensors(path)?);
    let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport { source_format: format.to_string(), ..Default::default() };
    for (name, var) in &vars {
        match file.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.size() != var.size() => report.mismatched.push((name.clone(), var.size(), t.size())),
            Some(_) => report.loaded.push(name.clone()),
        }
    }
    report.unused = file.keys().filter(|k| !vars.contains_key(*k)).cloned().collect();
    let problems = report.problems(head_prefix);
    if !problems.is_empty() {
        let shown = problems.iter().take(8).cloned().collect::<Vec<_>>().join("; ");
        let more = if problems.len() > 8 { format!(" (and {} more)", problems.len() - 8) } else { String::new() };
        return Err(CoreError::WeightsMismatch { path: path.into(), summary: format!("{shown}{more}") });
    }
    tch::no_grad(|| {
        for name in &report.loaded {
            let mut var = vars[name].shallow_clone();
            var.copy_(&file[name].to_kind(Kind::Float).to_device(var.device()));
        }
    });
    if format != SourceFormat::Timm {
        tracing::info!("{}: renamed {} checkpoint keys to timm's", path.display(), format);
    }
    Ok(report)
}
