//! Running an experiment's grid: resumable (ended runs are skipped), shardable (`i/n`), safe
//! with several processes on one output folder, one folder per run.
//!
//! A run's id hashes its identity: the resolved config, the content of its weights file and
//! of its data split (see [`super::identity`]), so a changed setting, other weights or another split is
//! another run. Each run lives in `out/runs/<id>/` (`spec.json`, then whatever the run writes,
//! then `result.json` when it ends). `runs.csv` is rebuilt from the result files (see
//! [`runs_csv`]). A run whose folder has no `result.json` was interrupted: its folder is
//! cleared and the run redone. A failed run (its error in `result.json` and in `runs.csv`) is
//! tried again only with `retry_failed`. A run is claimed with a lock on
//! `.locks/<id>.lock`; a run claimed elsewhere is skipped and reported, never cleared.
use super::runs_csv::{self, FileLock};
use crate::config::record::{read_record, RunRecord, Status};
use crate::config::spec::RunSpec;
use crate::util::fs::write_atomic;
use anyhow::{bail, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What one finished run reports: metric name -> value, plus free-form info columns.
pub struct RunResult {
    pub metrics: BTreeMap<String, f64>,
    pub info: BTreeMap<String, String>,
}

/// Shard `index` of `count`, 0-based, written `index/count` (`0/4` .. `3/4`, as slurm's
/// `--array=0-3` numbers its tasks): spec k of the grid runs in shard k % count, so the
/// shards, run separately, cover the grid exactly once.
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    fn check(&self) -> anyhow::Result<()> {
        if self.count == 0 || self.index >= self.count {
            bail!(
                "shard {}/{}: need 0 <= I < N (I is 0-based)",
                self.index,
                self.count
            );
        }
        Ok(())
    }

    pub fn contains(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("--shard {s}: '{x}' is not a number"))
        };
        let shard = Self {
            index: parse(i)?,
            count: parse(n)?,
        };
        shard.check()?;
        Ok(shard)
    }
}

#[derive(Debug, Default)]
pub struct GridOptions {
    pub shard: Option<Shard>,
    /// List (in [`GridSummary::planned`]) what would run; touch nothing.
    pub dry_run: bool,
    /// Run again the runs whose last attempt failed.
    pub retry_failed: bool,
    /// One of several workers on this grid: a run another worker holds is expected, not news.
    pub shared: bool,
}

#[derive(Debug, Default)]
pub struct GridSummary {
    pub finished: usize,
    pub skipped_already_done: usize,
    /// Runs whose earlier attempt failed, not retried (`retry_failed` is off).
    pub skipped_failed: usize,
    /// (id, error chain) of the runs that failed now.
    pub failed: Vec<(String, String)>,
    /// Runs claimed by another process at the time: neither run nor recorded here.
    pub running_elsewhere: Vec<String>,
    /// Dry run: the ids that would run.
    pub planned: Vec<String>,
}

/// Unique ids; no line break in an id or an axis (a CSV row must be one line).
fn check_specs(specs: &[RunSpec]) -> anyhow::Result<()> {
    let mut ids = BTreeSet::new();
    for s in specs {
        if !ids.insert(s.id.as_str()) {
            bail!(
                "the grid has two identical runs (id {}, axes {:?}); remove the duplicate axis \
                 values",
                s.id,
                s.axes
            );
        }
        let mut texts = std::iter::once(&s.id).chain(s.axes.iter().flat_map(|(k, v)| [k, v]));
        if let Some(t) = texts.find(|t| t.contains(['\n', '\r'])) {
            bail!("run {}: {t:?} holds a line break", s.id);
        }
    }
    Ok(())
}

/// Whether the run in `dir` needs no new attempt.
fn ended(dir: &Path, retry_failed: bool) -> Option<Status> {
    read_record(dir)
        .map(|r| r.status)
        .filter(|s| *s == Status::Ok || !retry_failed)
}

/// Runs every spec of this shard that has not ended, each in `out/runs/<id>/` (cleared
/// first, then `spec.json` written, then `run_one` called, then `result.json` written), and
/// rebuilds `runs.csv` after each. A failing `run_one` is recorded as a failed run and
/// reported, not fatal.
pub fn run_grid(
    out: &Path,
    specs: &[RunSpec],
    opts: &GridOptions,
    run_one: &mut dyn FnMut(&RunSpec, &Path) -> anyhow::Result<RunResult>,
) -> anyhow::Result<GridSummary> {
    check_specs(specs)?;
    if let Some(s) = &opts.shard {
        s.check()?;
    }
    let mine = specs
        .iter()
        .enumerate()
        .filter(|(k, _)| opts.shard.is_none_or(|s| s.contains(*k)))
        .map(|(_, s)| s);
    let mut summary = GridSummary::default();
    let runs = out.join("runs");
    let count_ended = |summary: &mut GridSummary, status: Status| match status {
        Status::Ok => summary.skipped_already_done += 1,
        Status::Failed => summary.skipped_failed += 1,
    };
    if opts.dry_run {
        for spec in mine {
            match ended(&runs.join(&spec.id), opts.retry_failed) {
                Some(s) => count_ended(&mut summary, s),
                None => summary.planned.push(spec.id.clone()),
            }
        }
        return Ok(summary);
    }
    let locks = out.join(".locks");
    for dir in [runs.clone(), locks.clone()] {
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    }
    for spec in mine {
        let dir = runs.join(&spec.id);
        if let Some(s) = ended(&dir, opts.retry_failed) {
            count_ended(&mut summary, s);
            continue;
        }
        let Some(_claim) = FileLock::try_acquire(&locks.join(format!("{}.lock", spec.id)))? else {
            if opts.shared {
                tracing::debug!("run {} is another worker's", spec.id);
            } else {
                tracing::warn!("run {} is running in another process; skipped", spec.id);
            }
            summary.running_elsewhere.push(spec.id.clone());
            continue;
        };
        // Another process may have ended it since we looked: never clear those.
        if let Some(s) = ended(&dir, opts.retry_failed) {
            count_ended(&mut summary, s);
            continue;
        }
        // An interrupted run that saved a checkpoint resumes from it; other attempts start over.
        let resumable = crate::train::checkpoint::exists(&dir) && read_record(&dir).is_none();
        if resumable {
            tracing::info!("run {}: resuming from its checkpoint", spec.id);
        } else if dir.exists() {
            tracing::info!("run {}: clearing an interrupted or failed attempt", spec.id);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing the earlier attempt {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        write_atomic(
            &dir.join("spec.json"),
            serde_json::to_string_pretty(spec)?.as_bytes(),
        )?;
        tracing::info!("run {} {:?}", spec.id, spec.axes);
        // A libtorch error (a CUDA out-of-memory first of all) panics through tch: caught, it
        // is this run's error like any other, and the grid goes on.
        let outcome = crate::util::panics::catch(|| run_one(spec, &dir));
        let (status, metrics, info, error) = match outcome {
            Ok(r) => {
                summary.finished += 1;
                let m = r
                    .metrics
                    .into_iter()
                    .map(|(k, v)| (k, v.is_finite().then_some(v)))
                    .collect();
                (Status::Ok, m, r.info, None)
            }
            // A signal stopped it after a checkpoint: no record, and the grid stops too.
            Err(e) if crate::util::interrupt::exit_code(&e).is_some() => return Err(e),
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!("run {} failed: {msg}", spec.id);
                summary.failed.push((spec.id.clone(), msg.clone()));
                (Status::Failed, BTreeMap::new(), BTreeMap::new(), Some(msg))
            }
        };
        let record = RunRecord {
            id: spec.id.clone(),
            status,
            axes: spec.axes.clone(),
            metrics,
            info,
            error,
            finished_utc: crate::util::provenance::now_utc(),
        };
        write_atomic(
            &dir.join("result.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        runs_csv::rebuild(out)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize) -> Vec<RunSpec> {
        crate::config::spec::numbered_specs(n)
    }

    fn ok(
        calls: &mut Vec<String>,
    ) -> impl FnMut(&RunSpec, &Path) -> anyhow::Result<RunResult> + '_ {
        move |s, dir| {
            assert!(dir.join("spec.json").is_file(), "spec.json comes first");
            calls.push(s.id.clone());
            Ok(RunResult {
                metrics: BTreeMap::from([("accuracy".into(), 0.5), ("loss".into(), 1.0)]),
                info: BTreeMap::from([("note".into(), "a, \"quoted\" value".into())]),
            })
        }
    }

    /// The ids of runs.csv's rows with status ok, in file order (a strict reader).
    fn rows(out: &Path) -> Vec<String> {
        let mut r = csv::Reader::from_path(out.join("runs.csv")).unwrap();
        r.records()
            .map(|x| x.unwrap())
            .filter(|x| &x[1] == "ok")
            .map(|x| x[0].to_string())
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn shards_parse_0_based() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!((s.index, s.count), (1, 4));
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn two_shards_cover_the_grid_exactly_once() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(5);
        let mut calls = Vec::new();
        for i in 0..2 {
            let o = GridOptions {
                shard: Some(Shard { index: i, count: 2 }),
                ..Default::default()
            };
            let sum = run_grid(d.path(), &s, &o, &mut ok(&mut calls)).unwrap();
            assert_eq!(sum.finished, [3, 2][i]);
        }
        let want = sorted(s.iter().map(|x| x.id.clone()).collect());
        assert_eq!(sorted(rows(d.path())), want);
        assert_eq!(sorted(calls), want);
        // Every run folder holds its spec and its result.
        for x in &s {
            let dir = d.path().join("runs").join(&x.id);
            assert!(dir.join("spec.json").is_file() && dir.join("result.json").is_file());
        }
    }

    #[test]
    fn a_rerun_skips_finished_runs() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(3);
        let mut calls = Vec::new();
        run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut calls)).unwrap();
        let mut again = Vec::new();
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut again)).unwrap();
        assert!(again.is_empty());
        assert_eq!((sum.finished, sum.skipped_already_done), (0, 3));
        assert_eq!(rows(d.path()).len(), 3);
    }

    #[test]
    fn an_interrupted_run_is_redone_from_scratch() {
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
        // A crash during the third run: its folder half full, no result.json; and a torn
        // result.json written by something else than our atomic writer.
        let stale = d.path().join("runs").join(&s[2].id);
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("stale.bin"), b"x").unwrap();
        let mut again = Vec::new();
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut again)).unwrap();
        assert_eq!(
            again,
            vec![s[2].id.clone()],
            "only the unfinished run is redone"
        );
        assert_eq!(sum.skipped_already_done, 2);
        assert!(!stale.join("stale.bin").exists(), "its folder was cleared");
        assert_eq!(
            sorted(rows(d.path())),
            sorted(s.iter().map(|x| x.id.clone()).collect())
        );
    }

    #[test]
    fn a_failed_run_is_recorded_and_retried_only_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(2);
        let mut fail =
            |spec: &RunSpec, _: &Path| -> anyhow::Result<RunResult> { bail!("boom {}", spec.id) };
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut fail).unwrap();
        assert_eq!(sum.failed.len(), 2);
        assert!(sum.failed[0].1.contains("boom"));
        assert!(rows(d.path()).is_empty());
        let csv = std::fs::read_to_string(d.path().join("runs.csv")).unwrap();
        assert_eq!(csv.matches(",failed,").count(), 2, "{csv}");
        assert!(csv.contains("boom"));
        let mut calls = Vec::new();
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut calls)).unwrap();
        assert!(calls.is_empty());
        assert_eq!(sum.skipped_failed, 2);
        let retry = GridOptions {
            retry_failed: true,
            ..Default::default()
        };
        run_grid(d.path(), &s, &retry, &mut ok(&mut calls)).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(rows(d.path()).len(), 2);
    }

    #[test]
    fn a_run_whose_libtorch_step_fails_is_a_failed_row_and_the_others_finish() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(3);
        let bad = s[1].id.clone();
        let mut done = Vec::new();
        let mut run = |spec: &RunSpec, _: &Path| -> anyhow::Result<RunResult> {
            if spec.id == bad {
                // A step that libtorch refuses mid-run: tch panics, as on a CUDA OOM.
                let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
                let _ = a.matmul(&a);
            }
            done.push(spec.id.clone());
            Ok(RunResult {
                metrics: BTreeMap::from([("accuracy".into(), 0.5)]),
                info: BTreeMap::new(),
            })
        };
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut run).unwrap();
        assert_eq!(sum.finished, 2, "the runs after the failed one ran");
        assert_eq!(done, vec![s[0].id.clone(), s[2].id.clone()]);
        assert_eq!(sum.failed.len(), 1);
        assert!(
            sum.failed[0].1.contains("internal error"),
            "{:?}",
            sum.failed
        );
        let csv = std::fs::read_to_string(d.path().join("runs.csv")).unwrap();
        assert_eq!(csv.matches(",failed,").count(), 1, "{csv}");
        assert_eq!(rows(d.path()).len(), 2);
    }

    #[test]
    fn a_run_claimed_by_another_process_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = specs(2);
        let mut calls = Vec::new();
        run_grid(
            d.path(),
            &s[..0],
            &GridOptions::default(),
            &mut ok(&mut calls),
        )
        .unwrap();
        let claim =
            FileLock::acquire(&d.path().join(".locks").join(format!("{}.lock", s[0].id))).unwrap();
        let sum = run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut calls)).unwrap();
        assert_eq!(sum.running_elsewhere, vec![s[0].id.clone()]);
        assert_eq!(calls, vec![s[1].id.clone()]);
        drop(claim);
        run_grid(d.path(), &s, &GridOptions::default(), &mut ok(&mut calls)).unwrap();
        assert_eq!(rows(d.path()).len(), 2);
    }

    #[test]
    fn a_dry_run_lists_and_touches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let o = GridOptions {
            shard: Some(Shard { index: 0, count: 2 }),
            dry_run: true,
            ..Default::default()
        };
        let mut calls = Vec::new();
        let sum = run_grid(d.path(), &specs(3), &o, &mut ok(&mut calls)).unwrap();
        assert_eq!(sum.planned.len(), 2);
        assert!(calls.is_empty());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_grids_are_refused_before_any_run() {
        let d = tempfile::tempdir().unwrap();
        let mut calls = Vec::new();
        let twice = [specs(1), specs(1)].concat();
        assert!(run_grid(
            d.path(),
            &twice,
            &GridOptions::default(),
            &mut ok(&mut calls)
        )
        .is_err());
        let newline = vec![RunSpec::new(
            BTreeMap::from([("method".into(), "a\nb".into())]),
            serde_json::json!(1),
        )];
        assert!(run_grid(
            d.path(),
            &newline,
            &GridOptions::default(),
            &mut ok(&mut calls)
        )
        .is_err());
        assert!(calls.is_empty());
    }
}
