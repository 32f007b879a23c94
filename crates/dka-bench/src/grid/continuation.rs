//! A grid whose `epochs` grew goes on from its finished runs instead of starting over: a run
//! still to do whose identity equals a finished run's except for the number of epochs (fewer)
//! becomes a continuation of it (`dka train --continue`), if that run kept its final state.
//! The continuation's identity adds `continued_from` (the source's id and epochs), so its id
//! is not a fresh run's: with a cosine schedule its numbers differ from one long run's, and
//! with a constant one they are equal but the id still says how they were made.
use crate::config::record::{read_record, Status};
use crate::config::spec::RunSpec;
use crate::train::checkpoint;
use std::path::{Path, PathBuf};

/// `identity` without what a continuation changes: the epochs and the lineage.
fn base(identity: &serde_json::Value) -> serde_json::Value {
    let mut v = identity.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("continued_from");
        if let Some(c) = o.get_mut("config").and_then(|c| c.as_object_mut()) {
            c.remove("epochs");
        }
    }
    v
}

fn epochs(identity: &serde_json::Value) -> Option<u64> {
    identity["config"]["epochs"].as_u64()
}

/// A finished run that can be continued: its id, epochs and identity.
struct Source {
    id: String,
    epochs: u64,
    base: serde_json::Value,
}

fn sources(runs: &Path) -> Vec<Source> {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir: PathBuf = e.path();
        let ok = read_record(&dir).is_some_and(|r| r.status == Status::Ok);
        if !ok || !checkpoint::exists(&dir) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join("spec.json")) else {
            continue;
        };
        let Ok(spec) = serde_json::from_str::<RunSpec>(&text) else {
            continue;
        };
        if let Some(n) = epochs(&spec.identity) {
            out.push(Source {
                id: spec.id.clone(),
                epochs: n,
                base: base(&spec.identity),
            });
        }
    }
    out.sort_by(|a, b| b.epochs.cmp(&a.epochs).then(a.id.cmp(&b.id)));
    out
}

/// `specs` with every run still to do that can continue a finished run of `out` turned into
/// that continuation (new id, [`RunSpec::continues`] set); the others as they were. Returns
/// the specs and `(old id, new id)` for each one turned.
pub fn plan(out: &Path, specs: Vec<RunSpec>) -> (Vec<RunSpec>, Vec<(String, String)>) {
    let runs = out.join("runs");
    let found = sources(&runs);
    let mut renamed = Vec::new();
    let specs = specs
        .into_iter()
        .map(|spec| {
            let done = read_record(&runs.join(&spec.id)).is_some();
            let Some(n) = epochs(&spec.identity) else {
                return spec;
            };
            if done || found.is_empty() {
                return spec;
            }
            let b = base(&spec.identity);
            let Some(src) = found.iter().find(|s| s.epochs < n && s.base == b) else {
                return spec;
            };
            let mut identity = spec.identity.clone();
            identity["continued_from"] = serde_json::json!({ "id": src.id, "epochs": src.epochs });
            let mut c = RunSpec::with_identity(spec.axes.clone(), spec.config.clone(), identity);
            c.continues = Some(src.id.clone());
            renamed.push((spec.id.clone(), c.id.clone()));
            c
        })
        .collect();
    (specs, renamed)
}

/// Copies what a continuation starts from (the source's final state, `metrics.csv`,
/// `log.txt`) into its folder, unless the folder already holds a state of its own (an
/// interrupted continuation resumes from that).
pub fn seed(out: &Path, source: &str, dir: &Path) -> anyhow::Result<()> {
    if checkpoint::exists(dir) {
        return Ok(());
    }
    let src = out.join("runs").join(source);
    checkpoint::copy(&src, dir)?;
    for f in ["metrics.csv", "log.txt"] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), dir.join(f))
                .map_err(|e| anyhow::anyhow!("copying {} ({e})", src.join(f).display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::record::RunRecord;
    use std::collections::BTreeMap;

    fn spec(epochs: u64, lr: f64) -> RunSpec {
        let identity = serde_json::json!({
            "config": {"epochs": epochs, "lr": lr},
            "split_sha256": "s",
        });
        RunSpec::with_identity(BTreeMap::new(), serde_json::json!({}), identity)
    }

    fn finish(out: &Path, s: &RunSpec, keep_state: bool) {
        let dir = out.join("runs").join(&s.id);
        std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
        std::fs::write(dir.join("spec.json"), serde_json::to_string(s).unwrap()).unwrap();
        if keep_state {
            std::fs::write(dir.join("checkpoint/state.json"), "{}").unwrap();
        }
        let r = RunRecord {
            id: s.id.clone(),
            status: Status::Ok,
            axes: BTreeMap::new(),
            metrics: BTreeMap::new(),
            info: BTreeMap::new(),
            error: None,
            finished_utc: String::new(),
        };
        std::fs::write(dir.join("result.json"), serde_json::to_string(&r).unwrap()).unwrap();
    }

    #[test]
    fn a_longer_run_continues_the_longest_finished_one_of_the_same_settings() {
        let d = tempfile::tempdir().unwrap();
        let (two, three, other) = (spec(2, 0.1), spec(3, 0.1), spec(2, 0.5));
        finish(d.path(), &two, true);
        finish(d.path(), &three, true);
        finish(d.path(), &other, true);
        let (s, renamed) = plan(d.path(), vec![spec(5, 0.1), spec(5, 0.9), two.clone()]);
        assert_eq!(s[0].continues.as_deref(), Some(three.id.as_str()));
        assert_ne!(
            s[0].id,
            spec(5, 0.1).id,
            "a continuation has an id of its own"
        );
        assert_eq!(s[0].identity["continued_from"]["epochs"], 3);
        assert_eq!(s[1].continues, None, "no finished run of those settings");
        assert_eq!(s[2].id, two.id, "a finished run stays itself");
        assert_eq!(renamed.len(), 1);
        // The same grid again names the same continuation.
        let (again, _) = plan(d.path(), vec![spec(5, 0.1)]);
        assert_eq!(again[0].id, s[0].id);
    }

    #[test]
    fn a_run_without_its_final_state_is_not_continued() {
        let d = tempfile::tempdir().unwrap();
        finish(d.path(), &spec(2, 0.1), false);
        let (s, _) = plan(d.path(), vec![spec(4, 0.1)]);
        assert_eq!(s[0].continues, None);
    }
}
