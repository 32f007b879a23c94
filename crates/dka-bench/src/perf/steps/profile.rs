//! `dka bench steps --profile DIR`: each implementation of a case runs a few training steps
//! under its profiler (libtorch's through the C++ shim here, `torch.profiler` in the
//! reference), both write Chrome traces (open them in Perfetto or chrome://tracing), and the
//! operators' self times are compared side by side: `DIR/<case>.csv`, one row per operator
//! (or autograd node), sorted by how much more time this project spends in it per step.
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One operator's total over a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    /// Time in the operator itself, without the operators it called (µs).
    pub self_us: f64,
    /// Time from its start to its end (µs).
    pub total_us: f64,
}

/// Self and total time per operator name of a Chrome trace's CPU operator events (`cat`
/// `cpu_op`): nesting is read per thread from the start times and durations.
pub fn op_times(trace: &Value) -> BTreeMap<String, OpTime> {
    let events = trace
        .get("traceEvents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // (thread, start, duration, name)
    let mut evs: Vec<(String, f64, f64, String)> = events
        .iter()
        .filter(|e| e.get("ph").and_then(Value::as_str) == Some("X"))
        .filter(|e| e.get("cat").and_then(Value::as_str) == Some("cpu_op"))
        .filter_map(|e| {
            let num = |k: &str| e.get(k).and_then(Value::as_f64);
            Some((
                format!(
                    "{}/{}",
                    e.get("pid").map(|v| v.to_string()).unwrap_or_default(),
                    e.get("tid").map(|v| v.to_string()).unwrap_or_default()
                ),
                num("ts")?,
                num("dur")?,
                e.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect();
    // Per thread by start; a parent (longer) before a child that starts with it.
    evs.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(b.2.total_cmp(&a.2))
    });
    let mut out: BTreeMap<String, OpTime> = BTreeMap::new();
    // Open events of the current thread: (end, name, duration, children's time).
    let mut stack: Vec<(f64, String, f64, f64)> = Vec::new();
    let mut thread = String::new();
    let close = |out: &mut BTreeMap<String, OpTime>,
                 (_, name, dur, kids): (f64, String, f64, f64)| {
        let t = out.entry(name).or_default();
        t.calls += 1;
        t.total_us += dur;
        t.self_us += (dur - kids).max(0.0);
    };
    for (tid, ts, dur, name) in evs {
        if tid != thread {
            while let Some(e) = stack.pop() {
                close(&mut out, e);
            }
            thread = tid;
        }
        // Timestamps are rounded to the µs or below: allow that much overlap.
        while stack.last().is_some_and(|e| e.0 <= ts + 1e-3) {
            let e = stack.pop().unwrap();
            close(&mut out, e);
        }
        if let Some(parent) = stack.last_mut() {
            parent.3 += dur;
        }
        stack.push((ts + dur, name, dur, 0.0));
    }
    while let Some(e) = stack.pop() {
        close(&mut out, e);
    }
    out
}

/// Reads a Chrome trace file.
pub fn read_trace(path: &Path) -> anyhow::Result<BTreeMap<String, OpTime>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a Chrome trace (JSON)", path.display()))?;
    Ok(op_times(&v))
}

/// One row of the comparison: per step, the reference's and this project's time in `op`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompareRow {
    pub op: String,
    pub calls_ref: f64,
    pub calls_ours: f64,
    pub self_ms_ref: f64,
    pub self_ms_ours: f64,
    /// self_ms_ours − self_ms_ref: what this project spends more per step in `op`.
    pub self_ms_diff: f64,
    pub total_ms_ref: f64,
    pub total_ms_ours: f64,
}

/// Per-step comparison of two traces of `steps` steps each, sorted by `self_ms_diff`
/// (largest first).
pub fn compare(
    reference: &BTreeMap<String, OpTime>,
    ours: &BTreeMap<String, OpTime>,
    steps: usize,
) -> Vec<CompareRow> {
    let n = steps.max(1) as f64;
    let mut names: Vec<&String> = reference.keys().chain(ours.keys()).collect();
    names.sort();
    names.dedup();
    let mut rows: Vec<CompareRow> = names
        .into_iter()
        .map(|op| {
            let (r, o) = (
                reference.get(op).copied().unwrap_or_default(),
                ours.get(op).copied().unwrap_or_default(),
            );
            CompareRow {
                op: op.clone(),
                calls_ref: r.calls as f64 / n,
                calls_ours: o.calls as f64 / n,
                self_ms_ref: r.self_us / n / 1e3,
                self_ms_ours: o.self_us / n / 1e3,
                self_ms_diff: (o.self_us - r.self_us) / n / 1e3,
                total_ms_ref: r.total_us / n / 1e3,
                total_ms_ours: o.total_us / n / 1e3,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.self_ms_diff.total_cmp(&a.self_ms_diff));
    rows
}

/// A case name as a file name (`vit-b16 224 b8 adapter d192` → `vit-b16-224-b8-adapter-d192`).
pub fn slug(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, tid: u64, ts: f64, dur: f64) -> Value {
        json!({"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur})
    }

    #[test]
    fn self_time_excludes_nested_operators_per_thread() {
        let trace = json!({"traceEvents": [
            ev("aten::linear", 1, 0.0, 10.0),
            ev("aten::t", 1, 0.0, 1.0),
            ev("aten::addmm", 1, 1.0, 8.0),
            ev("aten::linear", 1, 20.0, 5.0),
            ev("aten::addmm", 1, 21.0, 3.0),
            // Another thread overlapping in time: not a child.
            ev("aten::mul", 2, 2.0, 4.0),
            json!({"ph": "X", "cat": "python_function", "name": "f", "pid": 1, "tid": 1, "ts": 0.0, "dur": 30.0}),
        ]});
        let t = op_times(&trace);
        assert_eq!(
            t["aten::linear"],
            OpTime {
                calls: 2,
                self_us: 1.0 + 2.0,
                total_us: 15.0
            }
        );
        assert_eq!(t["aten::addmm"].self_us, 11.0);
        assert_eq!(t["aten::mul"].self_us, 4.0);
        assert!(!t.contains_key("f"));
        let ours = op_times(&json!({"traceEvents": [ev("aten::addmm", 1, 0.0, 20.0)]}));
        let rows = compare(&t, &ours, 1);
        assert_eq!(rows[0].op, "aten::addmm");
        assert!((rows[0].self_ms_diff - 0.009).abs() < 1e-12);
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(
            slug("vit-b16 224 b8 adapter d192"),
            "vit-b16-224-b8-adapter-d192"
        );
        assert_eq!(slug("dka d̂ 192 bf16"), "dka-d-192-bf16");
    }
}
