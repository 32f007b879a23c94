//! Running an experiment's grid: resumable (finished runs are skipped), shardable (`i/n`), one
//! folder per run, and one row per finished run appended to `runs.csv`.
//!
//! `runs.csv` columns: `id`, the grid axes (sorted), [`METRICS`] (empty when a run has no such
//! metric), `other_metrics` and `info` (JSON objects), `finished_utc`. A row is appended with
//! one `write` of the whole line on a file opened for appending, then synced; a crash can leave
//! at most a torn last line, which the next start removes before anything else, so the file
//! never holds torn or duplicate rows. A failed run writes no row (a restart retries it); an
//! interrupted run's folder is cleared and the run redone.
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// Metric columns of runs.csv, in order; other metrics go to `other_metrics`.
pub const METRICS: [&str; 10] = [
    "primary",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "miou",
    "miou_foreground",
    "dice_foreground",
    "selected_epoch",
    "trainable_params",
];

/// One cell of an experiment grid: its stable id and the values of the grid axes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    pub id: String,
    pub axes: BTreeMap<String, String>,
    pub config: serde_json::Value,
}

impl RunSpec {
    /// The id is the first 12 hex digits of the SHA-256 of the config's canonical JSON (keys
    /// sorted), so the same run has the same id on every machine.
    pub fn new(axes: BTreeMap<String, String>, config: serde_json::Value) -> Self {
        let digest = Sha256::digest(serde_json::to_string(&config).expect("json").as_bytes());
        let id = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self { id, axes, config }
    }
}

pub struct RunResult {
    pub metrics: BTreeMap<String, f64>,
    pub info: BTreeMap<String, String>,
}

/// Shard `index` of `count` (0-based, written `index/count`): spec k runs in shard k % count.
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N"))?;
        let (index, count): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
        if count == 0 || index >= count {
            bail!("--shard {s}: need 0 <= I < N");
        }
        Ok(Self { index, count })
    }
}

#[derive(Debug, Default)]
pub struct GridOptions {
    pub shard: Option<Shard>,
    pub dry_run: bool,
}

#[derive(Debug, Default)]
pub struct GridSummary {
    pub finished: usize,
    pub skipped_already_done: usize,
    pub failed: Vec<(String, String)>,
}

fn header(axes: &[String]) -> Vec<String> {
    let mut h = vec!["id".to_string()];
    h.extend(axes.iter().cloned());
    h.extend(METRICS.iter().map(|m| m.to_string()));
    h.extend(["other_metrics", "info", "finished_utc"].map(String::from));
    h
}

/// Removes a torn last line and returns the ids already finished. Creates the file with its
/// header if it does not exist.
fn prepare_runs_csv(path: &Path, header: &[String]) -> anyhow::Result<BTreeSet<String>> {
    if !path.exists() {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(header)?;
        std::fs::write(path, w.into_inner()?).with_context(|| path.display().to_string())?;
        return Ok(BTreeSet::new());
    }
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let keep = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    // Complete lines only; then drop rows whose field count is wrong (a torn row that happened
    // to end in a newline inside a quoted field cannot occur: fields hold no raw newlines).
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..keep]);
    let found: Vec<String> = rdr.headers()?.iter().map(String::from).collect();
    if found != header {
        bail!(
            "{}: columns {:?} do not match this grid's {:?}; use another --out",
            path.display(),
            found,
            header
        );
    }
    let mut ids = BTreeSet::new();
    let mut good = Vec::new();
    let mut bad = false;
    for rec in rdr.records() {
        let rec = rec?;
        if rec.len() == header.len() && ids.insert(rec[0].to_string()) {
            good.push(rec);
        } else {
            bad = true;
        }
    }
    if keep != bytes.len() || bad {
        // Rewrite the clean rows (atomically) when anything was torn or repeated.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(header)?;
        for r in &good {
            w.write_record(r)?;
        }
        let tmp = path.with_extension("csv.partial");
        std::fs::write(&tmp, w.into_inner()?)?;
        std::fs::rename(&tmp, path)?;
        tracing::warn!(
            "{}: removed a torn or duplicate row left by an interrupted run",
            path.display()
        );
    }
    Ok(ids)
}

fn append_row(path: &Path, row: &[String]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(row)?;
    let line = w.into_inner()?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.write_all(&line)?;
    f.sync_data()?;
    Ok(())
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs this shard's specs that `out/runs.csv` does not list yet, each in `out/runs/<id>/`.
pub fn run_grid(
    out: &Path,
    specs: &[RunSpec],
    opts: &GridOptions,
    run_one: &mut dyn FnMut(&RunSpec, &Path) -> anyhow::Result<RunResult>,
) -> anyhow::Result<GridSummary> {
    let axes: Vec<String> = specs
        .iter()
        .flat_map(|s| s.axes.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ids: BTreeSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    if ids.len() != specs.len() {
        bail!("the grid has two identical runs (same config); remove the duplicate axis values");
    }
    std::fs::create_dir_all(out.join("runs")).with_context(|| out.display().to_string())?;
    let csv_path = out.join("runs.csv");
    let header = header(&axes);
    let done = prepare_runs_csv(&csv_path, &header)?;
    let mut summary = GridSummary::default();
    for (k, spec) in specs.iter().enumerate() {
        if opts.shard.is_some_and(|s| k % s.count != s.index) {
            continue;
        }
        if done.contains(&spec.id) {
            summary.skipped_already_done += 1;
            continue;
        }
        if opts.dry_run {
            println!("{} {:?}", spec.id, spec.axes);
            continue;
        }
        let dir = out.join("runs").join(&spec.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing the interrupted run {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("spec.json"), serde_json::to_string_pretty(spec)?)?;
        tracing::info!("run {} {:?}", spec.id, spec.axes);
        match run_one(spec, &dir) {
            Ok(r) => {
                let mut row = vec![spec.id.clone()];
                row.extend(
                    axes.iter()
                        .map(|a| spec.axes.get(a).cloned().unwrap_or_default()),
                );
                row.extend(
                    METRICS
                        .iter()
                        .map(|m| r.metrics.get(*m).map(|v| v.to_string()).unwrap_or_default()),
                );
                let other: BTreeMap<&String, &f64> = r
                    .metrics
                    .iter()
                    .filter(|(k, _)| !METRICS.contains(&k.as_str()))
                    .collect();
                row.push(serde_json::to_string(&other)?);
                row.push(serde_json::to_string(&r.info)?);
                row.push(now_utc());
                append_row(&csv_path, &row)?;
                summary.finished += 1;
            }
            Err(e) => {
                tracing::error!("run {} failed: {e:#}", spec.id);
                summary.failed.push((spec.id.clone(), format!("{e:#}")));
            }
        }
    }
    Ok(summary)
}

/// An sbatch job-array script running one shard per array task.
pub fn emit_slurm(
    out_script: &Path,
    experiment_file: &Path,
    n_shards: usize,
    extra_args: &str,
) -> anyhow::Result<()> {
    if n_shards == 0 {
        bail!("--emit-slurm needs at least one shard");
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "dka".into());
    let name = experiment_file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let log_dir = out_script.parent().unwrap_or(Path::new("."));
    let script = format!(
        "#!/bin/bash\n\
         # Written by `dka grid --emit-slurm {n_shards}`: each array task runs one shard of the grid;\n\
         # finished runs are skipped, so resubmitting the array resumes it.\n\
         #SBATCH --job-name=dka-{name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --output={logs}/slurm-%A_%a.log\n\
         set -euo pipefail\n\
         \"{exe}\" grid \"{exp}\" --shard \"${{SLURM_ARRAY_TASK_ID}}/{n_shards}\" {extra_args}\n",
        last = n_shards - 1,
        logs = log_dir.display(),
        exp = experiment_file.display(),
    );
    std::fs::write(out_script, script).with_context(|| out_script.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize) -> Vec<RunSpec> {
        (0..n)
            .map(|i| {
                RunSpec::new(
                    BTreeMap::from([("draw".to_string(), i.to_string())]),
                    serde_json::json!({ "draw": i }),
                )
            })
            .collect()
    }

    fn ok(
        calls: &mut Vec<String>,
    ) -> impl FnMut(&RunSpec, &Path) -> anyhow::Result<RunResult> + '_ {
        move |s, _| {
            calls.push(s.id.clone());
            Ok(RunResult {
                metrics: BTreeMap::from([("accuracy".into(), 0.5)]),
                info: BTreeMap::new(),
            })
        }
    }

    fn rows(out: &Path) -> Vec<String> {
        let mut r = csv::Reader::from_path(out.join("runs.csv")).unwrap();
        r.records().map(|x| x.unwrap()[0].to_string()).collect()
    }

    #[test]
    fn two_shards_cover_the_grid_exactly_once() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(5);
        let mut calls = Vec::new();
        for i in 0..2 {
            let o = GridOptions {
                shard: Some(Shard { index: i, count: 2 }),
                dry_run: false,
            };
            run_grid(d.path(), &s, &o, &mut ok(&mut calls)).unwrap();
        }
        let mut got = rows(d.path());
        got.sort();
        let mut want: Vec<String> = s.iter().map(|x| x.id.clone()).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(calls.len(), 5);
    }

    #[test]
    fn a_restart_skips_finished_runs_and_repairs_a_torn_row() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(3);
        let mut calls = Vec::new();
        run_grid(
            d.path(),
            &s[..2],
            &GridOptions::default(),
            &mut ok(&mut calls),
        )
        .unwrap();
        // A crash in the middle of writing the third row.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("runs.csv"))
            .unwrap();
        f.write_all(format!("{},2,0.5", s[2].id).as_bytes())
            .unwrap();
        let mut again = Vec::new();
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut again)).unwrap();
        assert_eq!(
            again,
            vec![s[2].id.clone()],
            "only the unfinished run is redone"
        );
        assert_eq!(sum.skipped_already_done, 2);
        assert_eq!(rows(d.path()).len(), 3);
    }

    #[test]
    fn a_failed_run_writes_no_row_and_is_retried() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(2);
        let mut fail =
            |spec: &RunSpec, _: &Path| -> anyhow::Result<RunResult> { bail!("boom {}", spec.id) };
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut fail).unwrap();
        assert_eq!(sum.failed.len(), 2);
        assert!(rows(d.path()).is_empty());
        let mut calls = Vec::new();
        run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut calls)).unwrap();
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn slurm_scripts_run_one_shard_per_array_task() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.sbatch");
        emit_slurm(&p, Path::new("experiments/x.toml"), 4, "--profile quick").unwrap();
        let s = std::fs::read_to_string(p).unwrap();
        assert!(
            s.contains("#SBATCH --array=0-3")
                && s.contains("--shard \"${SLURM_ARRAY_TASK_ID}/4\" --profile quick"),
            "{s}"
        );
        assert!("1/4".parse::<Shard>().is_ok() && "4/4".parse::<Shard>().is_err());
    }
}
