//! The grid's record of ended runs, safe against crashes and against several processes
//! (shards, slurm array tasks, on one or several nodes) sharing one output folder.
//!
//! Each run writes its own `runs/<id>/result.json` atomically (temporary file + rename) when
//! it ends: that file is the run's "done" marker. `runs.csv` is derived: rebuilt from all
//! result files under an exclusive advisory lock (`flock` on `runs.csv.lock`) and replaced
//! atomically, so any number of shards, restarted any number of times, list each run exactly
//! once and never tear a row. A run in progress holds `flock` on `.locks/<id>.lock`. Locks die
//! with their process; on NFS `flock` is forwarded to the server's lock manager (Linux ≥
//! 2.6.12).
use crate::config::record::{read_all, RunRecord};
use crate::util::fs::write_atomic;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::Path;

/// An exclusive advisory lock on a file, released when dropped or when the process dies.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> anyhow::Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))
    }

    /// Waits for the lock.
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        let file = Self::open(path)?;
        lock(&file, true).with_context(|| format!("locking {}", path.display()))?;
        Ok(Self { _file: file })
    }

    /// `None` when another process (or another handle in this one) holds it.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<Self>> {
        let file = Self::open(path)?;
        let got = lock(&file, false).with_context(|| format!("locking {}", path.display()))?;
        Ok(got.then_some(Self { _file: file }))
    }
}

/// Takes an exclusive `flock`, waiting or not; `false` when `wait` is false and it is held.
#[cfg(unix)]
fn lock(file: &File, wait: bool) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Without `flock`, a single process per output folder is assumed.
#[cfg(not(unix))]
fn lock(_file: &File, _wait: bool) -> std::io::Result<bool> {
    Ok(true)
}

/// Metric columns of runs.csv, in order; other metrics go to `other_metrics`.
pub const METRICS: [&str; 11] = [
    "primary",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "miou_foreground",
    "miou",
    "dice_foreground",
    "selected_epoch",
    "trainable_params",
    "skipped_steps",
];

/// Rebuilds `out/runs.csv` from every run's `result.json`, under an exclusive lock on
/// `out/runs.csv.lock`, atomically. Columns: `id`, `status`, every axis seen (sorted),
/// [`METRICS`] (empty when a run has no such metric or it was undefined), `other_metrics` and
/// `info` (JSON objects), `error`, `finished_utc`: one row per run, whatever process ran it.
pub fn rebuild(out: &Path) -> anyhow::Result<Vec<RunRecord>> {
    let _l = FileLock::acquire(&out.join("runs.csv.lock"))?;
    let records = read_all(out)?;
    let axes: BTreeSet<&String> = records.iter().flat_map(|r| r.axes.keys()).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["id".into(), "status".into()];
    header.extend(axes.iter().map(|a| a.to_string()));
    header.extend(METRICS.iter().map(|m| m.to_string()));
    header.extend(["other_metrics", "info", "error", "finished_utc"].map(String::from));
    w.write_record(&header)?;
    for r in &records {
        let mut row = vec![
            r.id.clone(),
            serde_json::to_value(r.status)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        row.extend(
            axes.iter()
                .map(|a| r.axes.get(*a).cloned().unwrap_or_default()),
        );
        row.extend(
            METRICS
                .iter()
                .map(|m| r.metric(m).map(|v| v.to_string()).unwrap_or_default()),
        );
        let other: BTreeMap<&String, &Option<f64>> = r
            .metrics
            .iter()
            .filter(|(k, _)| !METRICS.contains(&k.as_str()))
            .collect();
        row.push(serde_json::to_string(&other)?);
        row.push(serde_json::to_string(&r.info)?);
        row.push(
            r.error
                .clone()
                .unwrap_or_default()
                .replace(['\n', '\r'], " "),
        );
        row.push(r.finished_utc.clone());
        w.write_record(&row)?;
    }
    write_atomic(&out.join("runs.csv"), &w.into_inner()?)?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::record::Status;

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = FileLock::acquire(&p).unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn runs_csv_is_rebuilt_from_the_result_files() {
        let d = tempfile::tempdir().unwrap();
        let rec = |id: &str, axis: &str, acc: Option<f64>| RunRecord {
            id: id.into(),
            status: if acc.is_some() {
                Status::Ok
            } else {
                Status::Failed
            },
            axes: BTreeMap::from([(axis.to_string(), "x, \"y\"".to_string())]),
            metrics: BTreeMap::from([
                ("accuracy".to_string(), acc),
                ("loss".to_string(), Some(1.5)),
                ("auc".to_string(), None),
            ]),
            info: BTreeMap::new(),
            error: acc.is_none().then(|| "boom\nline 2".to_string()),
            finished_utc: crate::util::provenance::now_utc(),
        };
        for r in [rec("b", "method", Some(0.5)), rec("a", "draw", None)] {
            let dir = d.path().join("runs").join(&r.id);
            std::fs::create_dir_all(&dir).unwrap();
            write_atomic(
                &dir.join("result.json"),
                serde_json::to_string(&r).unwrap().as_bytes(),
            )
            .unwrap();
        }
        // A run without a result (interrupted) and a torn result file are not listed.
        std::fs::create_dir_all(d.path().join("runs/c")).unwrap();
        std::fs::write(d.path().join("runs/c/result.json"), "{\"id\": \"c\", ").unwrap();
        let recs = rebuild(d.path()).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let mut r = csv::Reader::from_path(d.path().join("runs.csv")).unwrap();
        let h = r.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        let col =
            |row: usize, n: &str| rows[row][h.iter().position(|c| c == n).unwrap()].to_string();
        assert_eq!(
            (col(0, "id"), col(0, "status"), col(0, "accuracy")),
            ("a".into(), "failed".into(), "".into())
        );
        assert_eq!(col(0, "error"), "boom line 2", "one line per row");
        assert_eq!(
            (col(1, "method"), col(1, "draw")),
            ("x, \"y\"".into(), "".into())
        );
        assert_eq!(
            (col(1, "accuracy"), col(1, "auc")),
            ("0.5".into(), "".into())
        );
        assert_eq!(col(1, "other_metrics"), r#"{"loss":1.5}"#);
        assert!(col(1, "finished_utc").ends_with('Z'));
    }
}
