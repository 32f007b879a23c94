//! A run's record, `runs/<id>/result.json`: written once, atomically, by the grid when the run
//! ends (its "done" marker), read by the grid (what is left to do), the tables and figures,
//! and `dka erf` (which runs a grid has).
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Whether a run finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// A run's `result.json`: written once, atomically, when the run ends (its "done" marker).
/// `runs.csv` is rebuilt from these files, never edited in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub status: Status,
    /// Axis name -> the value's label.
    pub axes: BTreeMap<String, String>,
    /// Metric -> value (`None`: undefined, e.g. an AUC without both classes).
    pub metrics: BTreeMap<String, Option<f64>>,
    pub info: BTreeMap<String, String>,
    /// The error chain of a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub finished_utc: String,
}

impl RunRecord {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .get(name)
            .copied()
            .flatten()
            .filter(|v| v.is_finite())
    }
}

/// The record in `dir/result.json`, if the run there ended (a malformed file counts as not
/// ended: the run is redone).
pub fn read_record(dir: &Path) -> Option<RunRecord> {
    let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                "{}: unreadable ({e}); the run will be redone",
                dir.join("result.json").display()
            );
            None
        }
    }
}

/// Every ended run's record under `out/runs/`, sorted by id.
pub fn read_all(out: &Path) -> anyhow::Result<Vec<RunRecord>> {
    let runs = out.join("runs");
    let mut records = Vec::new();
    let entries = match std::fs::read_dir(&runs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(anyhow::Error::new(e).context(runs.display().to_string())),
    };
    for entry in entries {
        let entry = entry.with_context(|| runs.display().to_string())?;
        if let Some(r) = read_record(&entry.path()) {
            records.push(r);
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}
