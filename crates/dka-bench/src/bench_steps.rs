//! `dka bench steps`: the same training step in this project and in a PyTorch-eager reference
//! written the way a researcher would (`benches/reference/steps.py`: timm + plain modules),
//! side by side: time, achieved GFLOP/s against the machine's measured fp32 GEMM throughput,
//! and peak memory, per case.
//!
//! Every implementation of a case runs in its own process (a `dka bench worker`, or the Python
//! reference), so each peak memory is its own: CPU, the resident set's high-water mark
//! (`VmHWM`, reset after setup so that loading the weights does not count); CUDA, the caching
//! allocator's peak. The workers of a case start together and are driven one step at a time,
//! interleaved (A B A B ..., the order rotated every round), so drifts of the machine's speed
//! hit both alike; the timed steps follow the parity steps, whose losses must agree to
//! round-off (same weights and batch, exported from this project to the reference through
//! safetensors; dropout off). Results: a CSV, a `.meta.json` (machine, commit, load, targets
//! met or missed) and a PNG bar chart of the ratios to the reference.
use crate::bench_worker::Request;
use crate::device::DeviceArg;
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// CSV to write (a `.meta.json` and a `.png` go next to it).
    #[arg(long, default_value = "results/bench/steps.csv")]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Timed interleaved rounds per case (3 when a reference step takes over 20 s on the CPU).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed steps whose losses both implementations must agree on (the first one also
    /// warms up and counts the reference's FLOPs).
    #[arg(long, default_value_t = 2)]
    pub parity_steps: usize,
    /// Largest accepted loss difference, relative to max(1, |reference loss|).
    #[arg(long, default_value_t = 1e-4)]
    pub loss_tol: f64,
    /// Only the cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Tiny models instead of the paper's (seconds; for checking the bench itself).
    #[arg(long)]
    pub quick: bool,
    /// The Python of the reference (with torch, timm, safetensors).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// The reference implementation.
    #[arg(long, default_value = "benches/reference/steps.py")]
    pub reference: PathBuf,
    /// Skip the bar chart.
    #[arg(long)]
    pub no_plot: bool,
    /// Threads of each implementation (OMP_NUM_THREADS and MKL_NUM_THREADS of the workers);
    /// default: libtorch's (the CPU cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep subnormal floats. By default both implementations flush them to zero
    /// (`torch.set_flush_denormal(True)`): arithmetic on subnormals is many times slower on
    /// x86 and whether a step meets them depends on the weights and data (the reference's
    /// depthwise convolutions met them in the first steps from random weights, 8x slower).
    #[arg(long)]
    pub keep_subnormals: bool,
}

pub use crate::bench_cases::{cases, CaseSpec, Impl};

pub use crate::bench_endpoint::{Endpoint, Launcher};

fn f(v: &Value, key: &str) -> anyhow::Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("reply without '{key}': {v}"))
}

// ---------------------------------------------------------------- measuring

/// What one implementation of one case measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub case: String,
    #[serde(rename = "impl")]
    pub imp: String,
    pub device: String,
    pub batch: i64,
    pub steps_timed: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Median time / the reference's median time.
    pub time_ratio: f64,
    /// FLOPs of one step as the reference's operations count them (matmuls, attention,
    /// convolutions; the depthwise convolutions at their direct cost).
    pub gflop_step: f64,
    /// Of which GEMM-like (everything but depthwise convolutions).
    pub gflop_dense: f64,
    /// gflop_step / median time.
    pub gflops: f64,
    /// This implementation's measured fp32 GEMM throughput.
    pub gemm_gflops: f64,
    /// (gflop_dense / gemm_gflops) / median time: the fraction of the GEMM-bound limit.
    pub gemm_bound_frac: f64,
    /// Peak memory: CPU the resident set's high-water mark over the steps (the process's
    /// libraries and weights included), CUDA the allocator's peak.
    pub peak_mib: f64,
    /// Memory before the first step (after loading).
    pub base_mib: f64,
    /// peak - base: what the steps add (activations, gradients, optimiser state).
    pub step_mib: f64,
    /// Peak / the reference's peak.
    pub peak_ratio: f64,
    /// step_mib / the reference's step_mib.
    pub step_mem_ratio: f64,
    pub loss_step1: f64,
    /// Largest |loss - reference loss| / max(1, |reference loss|) over the parity steps.
    pub loss_diff: f64,
    pub trainable: i64,
    /// 1-minute load average when the case started.
    pub load1: f64,
    /// Cores the machine's other processes used on average during the kept rounds.
    pub others_cores: f64,
    /// Rounds discarded because other processes used more than 0.25 cores meanwhile.
    pub rounds_discarded: usize,
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4).unwrap_or(&0.0);
    Some(busy / CLK_TCK)
}

/// CPU seconds (user + system, all threads) of process `pid`.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it start at ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / CLK_TCK)
}

/// How much CPU the rest of the machine took while the bench ran: busy CPU seconds of the
/// machine minus those of the bench's own processes.
struct CpuMeter {
    pids: Vec<u32>,
}

impl CpuMeter {
    fn snapshot(&self) -> Option<(f64, f64)> {
        let ours: Option<f64> = self.pids.iter().map(|&p| process_cpu_s(p)).sum();
        Some((machine_busy_s()?, ours?))
    }

    /// Cores the other processes used on average since `before`, over `wall` seconds.
    fn others_since(&self, before: Option<(f64, f64)>, wall: f64) -> Option<f64> {
        let (m0, o0) = before?;
        let (m1, o1) = self.snapshot()?;
        Some((((m1 - m0) - (o1 - o0)) / wall.max(1e-3)).max(0.0))
    }
}

/// Rounds during which the other processes on the machine used more than this many cores on
/// average are discarded and run again (at most `2 x reps` extra rounds).
pub const MAX_OTHERS_CORES: f64 = 0.25;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// GEMM throughput of each implementation's process, interleaved.
pub fn measure_gemm(
    launcher: &Launcher,
    device: &str,
    n: i64,
    rounds: usize,
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
            })?;
            out[i].push(f(&v, "gflops")?);
        }
    }
    Ok([median(&out[0]), median(&out[1])])
}

/// Runs one case: setup, parity steps, interleaved timed steps, memory. Returns its rows
/// (reference first) and whether the losses agreed.
pub fn run_case(
    spec: &CaseSpec,
    launcher: &Launcher,
    device: &str,
    dir: &Path,
    args: &Args,
    gemm: [f64; 2],
) -> anyhow::Result<(Vec<Row>, bool)> {
    let case = &spec.case;
    let load1 = loadavg()[0];
    tracing::info!("{}: starting {} workers", case.name, spec.impls.len());
    let mut eps = spec
        .impls
        .iter()
        .map(|&i| launcher.start(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file = dir.join(format!("case-{}.safetensors", std::process::id()));
    // This project's first worker exports; everyone else imports.
    let exporter = spec
        .impls
        .iter()
        .position(|i| matches!(i, Impl::Ours { .. }))
        .context("a case needs this project's implementation")?;
    let order: Vec<usize> = std::iter::once(exporter)
        .chain((0..eps.len()).filter(|&i| i != exporter))
        .collect();
    let mut trainable = vec![0i64; eps.len()];
    let mut base = vec![0.0; eps.len()];
    for &i in &order {
        let checkpoint = matches!(spec.impls[i], Impl::Ours { checkpoint: true });
        let v = eps[i].call(&Request::Setup {
            case: case.clone(),
            file: file.clone(),
            device: device.to_string(),
            export: i == exporter,
            checkpoint,
        })?;
        trainable[i] = v.get("trainable").and_then(Value::as_i64).unwrap_or(-1);
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(file.with_extension("backbone.json"));
    // After the reset the peak is the memory now (CPU: resident set; CUDA: allocated).
    for (i, e) in eps.iter_mut().enumerate() {
        e.call(&Request::ResetPeak)?;
        base[i] = f(&e.call(&Request::Memory)?, "peak_bytes")?;
    }
    // Parity steps (the first also warms up; the reference counts FLOPs in it).
    let n = eps.len();
    let mut losses = vec![Vec::new(); n];
    let mut flops = (0.0, 0.0);
    let mut ref_ms = 0.0f64;
    for s in 0..args.parity_steps.max(1) {
        for i in 0..n {
            let is_ref = spec.impls[i] == Impl::Reference;
            let v = eps[i].call(&Request::Step {
                count_flops: is_ref && s == 0,
            })?;
            losses[i].push(f(&v, "loss")?);
            if is_ref {
                if s == 0 {
                    flops = (
                        v.get("flops_dense").and_then(Value::as_f64).unwrap_or(0.0),
                        v.get("flops_depthwise")
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0),
                    );
                } else {
                    ref_ms = ref_ms.max(f(&v, "ms")?);
                }
            }
        }
    }
    let r = spec
        .impls
        .iter()
        .position(|&i| i == Impl::Reference)
        .context("a case needs the reference")?;
    let diffs: Vec<f64> = (0..n)
        .map(|i| {
            losses[i]
                .iter()
                .zip(&losses[r])
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0.0, f64::max)
        })
        .collect();
    let parity = diffs.iter().all(|d| *d <= args.loss_tol);
    for i in 0..n {
        tracing::info!(
            "{}: {} losses {:?} (max rel diff to the reference {:.1e})",
            case.name,
            spec.impls[i].label(),
            losses[i],
            diffs[i]
        );
    }
    if !parity {
        tracing::error!(
            "{}: the losses differ by more than {:e}; timing anyway",
            case.name,
            args.loss_tol
        );
    }
    // Timed, interleaved rounds.
    let reps = if device == "cpu" && ref_ms > 20_000.0 {
        args.reps.min(3)
    } else {
        args.reps
    }
    .max(1);
    let meter = CpuMeter {
        pids: std::iter::once(std::process::id())
            .chain(eps.iter().map(Endpoint::pid))
            .collect(),
    };
    let mut times = vec![Vec::new(); n];
    let (mut discarded, mut others_sum) = (0usize, 0.0f64);
    let mut attempt = 0usize;
    while times[0].len() < reps {
        let round = attempt;
        attempt += 1;
        let before = meter.snapshot();
        let started = std::time::Instant::now();
        let mut got = vec![0.0; n];
        for k in 0..n {
            let i = (k + round) % n;
            let v = eps[i].call(&Request::Step { count_flops: false })?;
            got[i] = f(&v, "ms")?;
        }
        let others = meter
            .others_since(before, started.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let summary = (0..n)
            .map(|i| format!("{} {:.0} ms", spec.impls[i].label(), got[i]))
            .collect::<Vec<_>>()
            .join(", ");
        // Keep a busy round only when the retries are spent (the CSV says how many were not).
        let retries_left = attempt < 3 * reps;
        if others > MAX_OTHERS_CORES && retries_left {
            discarded += 1;
            tracing::warn!(
                "{}: round discarded, other processes used {others:.2} cores ({summary})",
                case.name
            );
            continue;
        }
        others_sum += others;
        for i in 0..n {
            times[i].push(got[i]);
        }
        tracing::info!(
            "{}: round {}/{reps}: {summary} (others {others:.2} cores)",
            case.name,
            times[0].len()
        );
    }
    let others_mean = others_sum / times[0].len() as f64;
    let mut peak = vec![0.0; n];
    for (i, e) in eps.iter_mut().enumerate() {
        peak[i] = f(&e.call(&Request::Memory)?, "peak_bytes")?;
    }
    drop(eps);
    let mib = 1024.0 * 1024.0;
    let (gflop_dense, gflop_dw) = (flops.0 / 1e9, flops.1 / 1e9);
    let gflop = gflop_dense + gflop_dw;
    let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let rows = (0..n)
        .map(|i| {
            let g = if spec.impls[i] == Impl::Reference {
                gemm[0]
            } else {
                gemm[1]
            };
            let s = med[i] / 1e3;
            let step = |k: usize| (peak[k] - base[k]).max(0.0) / mib;
            Row {
                case: case.name.clone(),
                imp: spec.impls[i].label().to_string(),
                device: device.to_string(),
                batch: case.batch,
                steps_timed: times[i].len(),
                median_ms: med[i],
                min_ms: times[i].iter().cloned().fold(f64::INFINITY, f64::min),
                max_ms: times[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                time_ratio: med[i] / med[r],
                gflop_step: gflop,
                gflop_dense,
                gflops: gflop / s,
                gemm_gflops: g,
                gemm_bound_frac: (gflop_dense / g) / s,
                peak_mib: peak[i] / mib,
                base_mib: base[i] / mib,
                step_mib: step(i),
                peak_ratio: peak[i] / peak[r],
                step_mem_ratio: step(i) / step(r).max(1e-9),
                loss_step1: losses[i][0],
                loss_diff: diffs[i],
                trainable: trainable[i],
                load1,
                others_cores: others_mean,
                rounds_discarded: discarded,
            }
        })
        .collect();
    Ok((rows, parity))
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
pub fn run_with(args: &Args, launcher: &Launcher) -> anyhow::Result<Vec<Row>> {
    let device = match args.device {
        DeviceArg::Cpu => "cpu".to_string(),
        DeviceArg::Cuda(i) => {
            crate::device::pick(args.device)?;
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
    let specs: Vec<CaseSpec> = cases(args.quick)
        .into_iter()
        .filter(|c| args.cases.is_empty() || args.cases.iter().any(|s| c.case.name.contains(s)))
        .collect();
    if specs.is_empty() {
        bail!("no case matches {:?}", args.cases);
    }
    let load_start = loadavg();
    let started = std::time::Instant::now();
    let n = match (args.quick, device.as_str()) {
        (true, _) => 256,
        (false, "cpu") => 2048,
        (false, _) => 8192,
    };
    let gemm = measure_gemm(launcher, &device, n, if args.quick { 1 } else { 5 })?;
    tracing::info!(
        "fp32 GEMM {n}x{n}: pytorch {:.0} GFLOP/s, dka {:.0} GFLOP/s",
        gemm[0],
        gemm[1]
    );
    let info = launcher
        .start(Impl::Reference)
        .and_then(|mut e| e.call(&Request::Info))
        .unwrap_or(Value::Null);
    let tmpdir = std::env::temp_dir();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for spec in &specs {
        let (r, parity) = run_case(spec, launcher, &device, &tmpdir, args, gemm)
            .with_context(|| spec.case.name.clone())?;
        if !parity {
            failed.push(spec.case.name.clone());
        }
        rows.extend(r);
        write_csv(&args.output, &rows)?;
    }
    let load_end = loadavg();
    let meta = crate::bench_report::meta(
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
        crate::bench_report::plot(&args.output.with_extension("png"), &rows, &device)?;
    }
    tracing::info!(
        "wrote {} and {}",
        args.output.display(),
        meta_path.display()
    );
    for line in crate::bench_report::summary(&rows) {
        tracing::info!("{line}");
    }
    if !failed.is_empty() {
        bail!(
            "the implementations' losses differ beyond {:e} in: {}",
            args.loss_tol,
            failed.join(", ")
        );
    }
    Ok(rows)
}

/// `dka bench steps`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let launcher = Launcher::new(&args, Some(std::env::current_exe()?));
    run_with(&args, &launcher).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let args = Args {
            output: dir.path().join("steps.csv"),
            device: DeviceArg::Cpu,
            reps: 1,
            parity_steps: 2,
            loss_tol: 1e-4,
            cases: vec!["tiny dka d4".into(), "stack".into()],
            quick: true,
            python,
            reference: root.join("benches/reference/steps.py"),
            no_plot: false,
            threads: None,
            keep_subnormals: false,
        };
        let launcher = Launcher::new(&args, None);
        let rows = run_with(&args, &launcher).unwrap();
        assert_eq!(rows.len(), 2 + 3);
        for r in &rows {
            assert!(r.loss_diff <= 1e-4, "{r:?}");
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
