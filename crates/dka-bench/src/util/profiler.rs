//! libtorch's operator profiler (Kineto, CPU activities, with input shapes) through the C++
//! shim: what `torch.profiler.profile(activities=[CPU])` records, written as a Chrome trace
//! (open it in Perfetto or chrome://tracing). Used by `dka bench steps --profile` and by the
//! trainer's `DKA_TRACE` (see [`TraceRequest`]).
use std::path::{Path, PathBuf};

extern "C" {
    fn dka_profiler_start() -> i32;
    fn dka_profiler_stop(path: *const std::os::raw::c_char) -> i32;
}

/// Starts the profiler on the calling thread.
pub fn start() -> anyhow::Result<()> {
    anyhow::ensure!(
        unsafe { dka_profiler_start() } == 0,
        "libtorch's profiler did not start"
    );
    Ok(())
}

/// Stops the profiler and writes its trace to `out`.
pub fn stop(out: &Path) -> anyhow::Result<()> {
    let path = std::ffi::CString::new(out.to_string_lossy().as_bytes())?;
    anyhow::ensure!(
        unsafe { dka_profiler_stop(path.as_ptr()) } == 0,
        "{}: libtorch's profiler could not write its trace",
        out.display()
    );
    Ok(())
}

/// Runs `f` under libtorch's profiler and writes its Chrome trace to `out`.
pub fn profiled<T>(out: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    start()?;
    let r = f();
    let stopped = stop(out);
    let v = r?;
    stopped?;
    Ok(v)
}

/// `DKA_TRACE=FILE[:FIRST[:COUNT]]`: the trainer records training steps FIRST..FIRST+COUNT of
/// every run it trains (counted from the run's start, 0-based; defaults 5 and 3) into FILE, a
/// Chrome trace; with several runs in one process each run writes `FILE` with its run id
/// inserted before the extension.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    pub file: PathBuf,
    pub first: usize,
    pub count: usize,
}

impl TraceRequest {
    /// The request in `DKA_TRACE`, if any; a malformed value is an error that names it.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var("DKA_TRACE") {
            Ok(v) if !v.is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    pub fn parse(v: &str) -> anyhow::Result<Self> {
        let mut parts = v.splitn(3, ':');
        let file = PathBuf::from(parts.next().unwrap_or_default());
        let num = |s: Option<&str>, default: usize, what: &str| -> anyhow::Result<usize> {
            match s {
                None => Ok(default),
                Some(s) => s.parse().map_err(|_| {
                    anyhow::anyhow!("DKA_TRACE={v}: {what} '{s}' is not a whole number (DKA_TRACE=FILE[:FIRST[:COUNT]])")
                }),
            }
        };
        let first = num(parts.next(), 5, "FIRST")?;
        let count = num(parts.next(), 3, "COUNT")?;
        anyhow::ensure!(
            !file.as_os_str().is_empty() && count > 0,
            "DKA_TRACE={v}: give a file and a positive step count (DKA_TRACE=FILE[:FIRST[:COUNT]])"
        );
        Ok(Self { file, first, count })
    }

    /// The trace file of run `id`: `trace.json` becomes `trace-<id>.json`.
    pub fn file_for(&self, id: &str) -> PathBuf {
        let stem = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match self.file.extension() {
            Some(ext) => format!("{stem}-{id}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{id}"),
        };
        self.file.with_file_name(name)
    }
}

/// A run's `DKA_TRACE`: counts the steps this process runs and puts the requested ones under
/// the profiler, writing the trace for run `id` after the last of them.
#[derive(Debug)]
pub struct StepTracer {
    request: TraceRequest,
    steps: usize,
}

impl StepTracer {
    /// The tracer `DKA_TRACE` asks for, if any.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Ok(TraceRequest::from_env()?.map(|request| Self { request, steps: 0 }))
    }

    /// Before a step: starts the profiler at the first traced one.
    pub fn before_step(&self) -> anyhow::Result<()> {
        if self.steps == self.request.first {
            start()?;
        }
        Ok(())
    }

    /// After a step (the device synchronised by `sync`): writes the trace after the last
    /// traced one.
    pub fn after_step(&mut self, id: &str, sync: impl FnOnce()) -> anyhow::Result<()> {
        self.steps += 1;
        let (first, count) = (self.request.first, self.request.count);
        if self.steps != first + count {
            return Ok(());
        }
        let out = self.request.file_for(id);
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("DKA_TRACE: creating {}: {e}", parent.display()))?;
        }
        sync();
        stop(&out)?;
        tracing::info!(
            "DKA_TRACE: steps {first}..{} of this run traced into {}",
            first + count,
            out.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_requests_parse_with_defaults_and_reject_bad_values() {
        let r = TraceRequest::parse("/tmp/t.json").unwrap();
        assert_eq!((r.first, r.count), (5, 3));
        let r = TraceRequest::parse("t.json:10:2").unwrap();
        assert_eq!(
            (r.file.as_path(), r.first, r.count),
            (Path::new("t.json"), 10, 2)
        );
        assert!(TraceRequest::parse("t.json:x").is_err());
        assert!(TraceRequest::parse("t.json:1:0").is_err());
        assert!(TraceRequest::parse(":1:2").is_err());
        assert_eq!(
            TraceRequest::parse("out/t.json").unwrap().file_for("ab12"),
            PathBuf::from("out/t-ab12.json")
        );
    }

    #[test]
    fn a_profiled_closure_writes_a_trace_with_its_operators() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("t.json");
        profiled(&out, || {
            let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
            let _ = a.matmul(&a);
            Ok(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("aten::matmul"), "no matmul in the trace");
    }

    #[test]
    fn a_step_tracer_writes_its_steps_only() {
        let d = tempfile::tempdir().unwrap();
        let mut t = StepTracer {
            request: TraceRequest::parse(&format!("{}/t.json:1:2", d.path().display())).unwrap(),
            steps: 0,
        };
        let out = d.path().join("t-run7.json");
        for step in 0..4 {
            t.before_step().unwrap();
            let a = tch::Tensor::ones([2, 2], (tch::Kind::Float, tch::Device::Cpu));
            let _ = a.mm(&a);
            t.after_step("run7", || {}).unwrap();
            assert_eq!(out.is_file(), step >= 2, "after step {step}");
        }
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text.matches("\"aten::mm\"").count(),
            2,
            "steps 1 and 2 only"
        );
    }
}
