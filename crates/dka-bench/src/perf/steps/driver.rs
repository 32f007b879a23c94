//! Running `dka bench steps`: the fp32 GEMM throughput of each implementation, then every
//! case (setup, parity steps, interleaved timed rounds, memory), the CSV, the sidecar and the
//! chart.
use super::case::run_case;
use super::endpoint::Launcher;
use super::meter::loadavg;
use super::protocol::Request;
use super::{cases, CaseSpec, Impl, Row, StepsOptions};
use crate::util::device::DeviceArg;
use crate::util::stats::median;
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::Path;

pub(super) fn f(v: &Value, key: &str) -> anyhow::Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("reply without '{key}': {v}"))
}

/// GEMM throughput of each implementation's process, interleaved.
pub fn measure_gemm(
    launcher: &Launcher,
    device: &str,
    n: i64,
    rounds: usize,
    bf16: bool,
) -> anyhow::Result<[f64; 2]> {
    let mut eps = [
        launcher.start(Impl::Reference)?,
        launcher.start(Impl::Ours { checkpoint: false })?,
    ];
    let mut out = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for k in 0..2 {
            let i = (k + r) % 2;
            let v = eps[i].call(&Request::Gemm {
                n,
                reps: 3,
                device: device.to_string(),
                bf16,
            })?;
            out[i].push(f(&v, "gflops")?);
        }
    }
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    Ok([med(&out[0]), med(&out[1])])
}

/// Writes the rows as CSV (atomically).
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let tmp = path.with_extension("csv.partial");
    {
        let mut w = csv::Writer::from_path(&tmp).with_context(|| tmp.display().to_string())?;
        for r in rows {
            w.serialize(r)?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Runs every selected case and writes the CSV, meta and chart.
pub fn run_with(args: &StepsOptions, launcher: &Launcher) -> anyhow::Result<Vec<Row>> {
    let device = match args.device {
        DeviceArg::Cpu => "cpu".to_string(),
        DeviceArg::Cuda(i) => {
            crate::util::device::pick(args.device)?;
            format!("cuda:{i}")
        }
        DeviceArg::Auto => match tch::Device::cuda_if_available() {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        },
    };
    if let Some(dir) = args.output.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    use crate::config::run::Precision;
    let specs: Vec<CaseSpec> = args
        .precisions
        .iter()
        .flat_map(|&p| {
            cases(args.quick).into_iter().map(move |mut c| {
                if p == Precision::Bf16 {
                    c.case.name = format!("{} bf16", c.case.name);
                }
                c.case.precision = p;
                c
            })
        })
        .filter(|c| args.cases.is_empty() || args.cases.iter().any(|s| c.case.name.contains(s)))
        .collect();
    if let Some(p) = args
        .precisions
        .iter()
        .find(|p| !matches!(p, Precision::Fp32 | Precision::Bf16))
    {
        bail!("--precision {p:?}: the bench compares fp32 and bf16");
    }
    if specs.is_empty() {
        bail!("no case matches {:?}", args.cases);
    }
    if let Some(dir) = &args.profile {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        for spec in &specs {
            super::case::profile_case(spec, launcher, &device, &std::env::temp_dir(), args, dir)
                .with_context(|| spec.case.name.clone())?;
        }
        return Ok(Vec::new());
    }
    let load_start = loadavg();
    let started = std::time::Instant::now();
    let n = match (args.quick, device.as_str()) {
        (true, _) => 256,
        (false, "cpu") => 2048,
        (false, _) => 8192,
    };
    let rounds = if args.quick { 1 } else { 5 };
    let gemm = measure_gemm(launcher, &device, n, rounds, false)?;
    tracing::info!(
        "fp32 GEMM {n}x{n}: pytorch {:.0} GFLOP/s, dka {:.0} GFLOP/s",
        gemm[0],
        gemm[1]
    );
    let gemm_bf16 = if args.precisions.contains(&Precision::Bf16) {
        let g = measure_gemm(launcher, &device, n, rounds, true)?;
        tracing::info!(
            "bf16 GEMM {n}x{n}: pytorch {:.0} GFLOP/s, dka {:.0} GFLOP/s",
            g[0],
            g[1]
        );
        g
    } else {
        [f64::NAN; 2]
    };
    let info = launcher
        .start(Impl::Reference)
        .and_then(|mut e| e.call(&Request::Info))
        .unwrap_or(Value::Null);
    let tmpdir = std::env::temp_dir();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for spec in &specs {
        let g = if spec.case.precision == Precision::Bf16 {
            gemm_bf16
        } else {
            gemm
        };
        let (r, parity) = run_case(spec, launcher, &device, &tmpdir, args, g)
            .with_context(|| spec.case.name.clone())?;
        if !parity {
            failed.push(spec.case.name.clone());
        }
        rows.extend(r);
        write_csv(&args.output, &rows)?;
    }
    let load_end = loadavg();
    let meta = crate::perf::steps::report::meta(
        args,
        &rows,
        &specs,
        gemm,
        n,
        info,
        [load_start, load_end],
        started.elapsed().as_secs_f64(),
    );
    let meta_path = args.output.with_extension("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)?;
    if !args.no_plot {
        crate::perf::steps::report::plot(&args.output.with_extension("png"), &rows, &device)?;
    }
    tracing::info!(
        "wrote {} and {}",
        args.output.display(),
        meta_path.display()
    );
    for line in crate::perf::steps::report::summary(&rows) {
        tracing::info!("{line}");
    }
    if !failed.is_empty() {
        bail!(
            "the implementations' losses differ beyond {:e} (bf16: {:e}) in: {}",
            args.loss_tol,
            args.loss_tol_bf16,
            failed.join(", ")
        );
    }
    Ok(rows)
}

/// `dka bench steps`.
pub fn run(args: StepsOptions) -> anyhow::Result<()> {
    let launcher = Launcher::new(&args, Some(std::env::current_exe()?));
    run_with(&args, &launcher).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--profile`: both implementations' Chrome traces and the per-operator comparison,
    /// which finds the matrix products on both sides.
    #[test]
    fn bench_profile_writes_traces_and_the_comparison() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            eprintln!("skipped: no {} (run `just setup`)", python.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let args = StepsOptions {
            output: dir.path().join("steps.csv"),
            cases: vec!["tiny adapter".into()],
            quick: true,
            python,
            reference: root.join("benches/reference/steps.py"),
            profile: Some(dir.path().join("profile")),
            profile_steps: 2,
            ..StepsOptions::default()
        };
        let launcher = Launcher::new(&args, None);
        run_with(&args, &launcher).unwrap();
        let p = dir.path().join("profile");
        for f in ["tiny-adapter-pytorch.json", "tiny-adapter-dka.json"] {
            let t = crate::perf::steps::profile::read_trace(&p.join(f)).unwrap();
            let mm: u64 = ["aten::addmm", "aten::mm", "aten::matmul"]
                .iter()
                .filter_map(|k| t.get(*k).map(|o| o.calls))
                .sum();
            assert!(mm > 0, "{f}: no matrix product in {:?}", t.keys());
        }
        let rows: Vec<std::collections::BTreeMap<String, String>> =
            csv::Reader::from_path(p.join("tiny-adapter.csv"))
                .unwrap()
                .deserialize()
                .collect::<Result<_, _>>()
                .unwrap();
        assert!(rows.iter().any(|r| r["op"] == "aten::addmm"
            && r["calls_ref"].parse::<f64>().unwrap() > 0.0
            && r["calls_ours"].parse::<f64>().unwrap() > 0.0));
        assert!(!args.output.exists(), "profiling writes no timing CSV");
    }

    /// The bench on tiny models end to end (this project in-process, the reference in the
    /// repository's .venv): the losses agree and every column is filled.
    #[test]
    fn bench_steps_runs_on_tiny_models() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            eprintln!("skipped: no {} (run `just setup`)", python.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let args = StepsOptions {
            output: dir.path().join("steps.csv"),
            device: DeviceArg::Cpu,
            reps: 1,
            parity_steps: 2,
            loss_tol: 1e-4,
            loss_tol_bf16: 3e-2,
            precisions: vec![
                crate::config::run::Precision::Fp32,
                crate::config::run::Precision::Bf16,
            ],
            cases: vec!["tiny dka d4".into(), "stack".into()],
            quick: true,
            python,
            reference: root.join("benches/reference/steps.py"),
            no_plot: false,
            threads: None,
            keep_subnormals: false,
            profile: None,
            profile_steps: 3,
        };
        let launcher = Launcher::new(&args, None);
        let rows = run_with(&args, &launcher).unwrap();
        assert_eq!(rows.len(), 2 * (2 + 3), "fp32 and bf16 rows");
        for r in &rows {
            let tol = if r.precision == "bf16" { 3e-2 } else { 1e-4 };
            assert!(r.loss_diff <= tol, "{r:?}");
            assert!(
                r.median_ms > 0.0 && r.gflop_step > 0.0 && r.peak_mib > 0.0,
                "{r:?}"
            );
        }
        let back: Vec<Row> = csv::Reader::from_path(&args.output)
            .unwrap()
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), rows.len());
        assert!(args.output.with_extension("meta.json").exists());
        assert!(args.output.with_extension("png").exists());
    }
}
