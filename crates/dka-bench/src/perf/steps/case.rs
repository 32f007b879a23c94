//! One case of `dka bench steps`: its workers started and set up on the same weights and batch
//! (this project's first worker exports them, the others import), the parity steps whose
//! losses must agree, the interleaved timed rounds (busy rounds discarded), the memory, and
//! the CSV rows.
use super::driver::f;
use super::endpoint::{Endpoint, Launcher};
use super::meter::{loadavg, CpuMeter};
use super::protocol::Request;
use super::{CaseSpec, Impl, Row, StepsOptions};
use crate::util::stats::median;
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// Rounds during which the other processes on the machine used more than this many cores on
/// average are discarded and run again (at most `2 x reps` extra rounds).
pub const MAX_OTHERS_CORES: f64 = 0.25;

/// The workers of one case, set up, and what they report before the first step.
struct Workers<'a> {
    spec: &'a CaseSpec,
    eps: Vec<Endpoint>,
    trainable: Vec<i64>,
    /// Memory after setup (the peak's baseline).
    base: Vec<f64>,
    /// The reference's index.
    r: usize,
}

/// What the parity steps found.
struct Parity {
    losses: Vec<Vec<f64>>,
    /// Largest relative loss difference to the reference, per implementation.
    diffs: Vec<f64>,
    ok: bool,
    /// The reference's FLOPs of a step: (dense, depthwise).
    flops: (f64, f64),
    /// The reference's slowest parity step after the first, in ms.
    ref_ms: f64,
}

/// The kept timed rounds.
struct Timing {
    times: Vec<Vec<f64>>,
    discarded: usize,
    others_mean: f64,
}

impl<'a> Workers<'a> {
    /// Starts every implementation's worker and sets the case up in each.
    fn start(
        spec: &'a CaseSpec,
        launcher: &Launcher,
        device: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        tracing::info!("{}: starting {} workers", spec.case.name, spec.impls.len());
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
        for &i in &order {
            let checkpoint = matches!(spec.impls[i], Impl::Ours { checkpoint: true });
            let v = eps[i].call(&Request::Setup {
                case: spec.case.clone(),
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
        let mut base = vec![0.0; eps.len()];
        for (i, e) in eps.iter_mut().enumerate() {
            e.call(&Request::ResetPeak)?;
            base[i] = f(&e.call(&Request::Memory)?, "peak_bytes")?;
        }
        let r = spec
            .impls
            .iter()
            .position(|&i| i == Impl::Reference)
            .context("a case needs the reference")?;
        Ok(Self {
            spec,
            eps,
            trainable,
            base,
            r,
        })
    }

    /// The parity steps (the first also warms up; the reference counts FLOPs in it).
    fn parity(&mut self, opts: &StepsOptions) -> anyhow::Result<Parity> {
        let (spec, n) = (self.spec, self.eps.len());
        let mut losses = vec![Vec::new(); n];
        let mut flops = (0.0, 0.0);
        let mut ref_ms = 0.0f64;
        for s in 0..opts.parity_steps.max(1) {
            for (i, ep) in self.eps.iter_mut().enumerate() {
                let is_ref = spec.impls[i] == Impl::Reference;
                let v = ep.call(&Request::Step {
                    count_flops: is_ref && s == 0,
                })?;
                losses[i].push(f(&v, "loss")?);
                if is_ref && s == 0 {
                    let get = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                    flops = (get("flops_dense"), get("flops_depthwise"));
                } else if is_ref {
                    ref_ms = ref_ms.max(f(&v, "ms")?);
                }
            }
        }
        let r = self.r;
        let diffs: Vec<f64> = (0..n)
            .map(|i| {
                losses[i]
                    .iter()
                    .zip(&losses[r])
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                    .fold(0.0, f64::max)
            })
            .collect();
        let tol = if spec.case.precision == crate::config::run::Precision::Bf16 {
            opts.loss_tol_bf16
        } else {
            opts.loss_tol
        };
        let ok = diffs.iter().all(|d| *d <= tol);
        for i in 0..n {
            tracing::info!(
                "{}: {} losses {:?} (max rel diff to the reference {:.1e})",
                spec.case.name,
                spec.impls[i].label(),
                losses[i],
                diffs[i]
            );
        }
        if !ok {
            tracing::error!(
                "{}: the losses differ by more than {:e}; timing anyway",
                spec.case.name,
                tol
            );
        }
        Ok(Parity {
            losses,
            diffs,
            ok,
            flops,
            ref_ms,
        })
    }

    /// `reps` timed rounds, the workers interleaved (the order rotated every round); a round
    /// in which other processes took more than [`MAX_OTHERS_CORES`] is run again, up to
    /// `3 × reps` attempts.
    fn timed_rounds(&mut self, reps: usize) -> anyhow::Result<Timing> {
        let (spec, n) = (self.spec, self.eps.len());
        let meter = CpuMeter {
            pids: std::iter::once(std::process::id())
                .chain(self.eps.iter().map(Endpoint::pid))
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
            let mut faults = vec![None; n];
            for k in 0..n {
                let i = (k + round) % n;
                let v = self.eps[i].call(&Request::Step { count_flops: false })?;
                got[i] = f(&v, "ms")?;
                faults[i] = v.get("page_faults").and_then(Value::as_u64);
            }
            let others = meter
                .others_since(before, started.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            let summary = (0..n)
                .map(|i| match faults[i] {
                    // Minor page faults during the step: memory the allocator returned to the
                    // kernel and took back.
                    Some(pf) => format!(
                        "{} {:.0} ms ({pf} page faults)",
                        spec.impls[i].label(),
                        got[i]
                    ),
                    None => format!("{} {:.0} ms", spec.impls[i].label(), got[i]),
                })
                .collect::<Vec<_>>()
                .join(", ");
            // Keep a busy round only when the retries are spent (the CSV says how many were not).
            if others > MAX_OTHERS_CORES && attempt < 3 * reps {
                discarded += 1;
                tracing::warn!(
                    "{}: round discarded, other processes used {others:.2} cores ({summary})",
                    spec.case.name
                );
                continue;
            }
            others_sum += others;
            for i in 0..n {
                times[i].push(got[i]);
            }
            tracing::info!(
                "{}: round {}/{reps}: {summary} (others {others:.2} cores)",
                spec.case.name,
                times[0].len()
            );
        }
        let others_mean = others_sum / times[0].len() as f64;
        Ok(Timing {
            times,
            discarded,
            others_mean,
        })
    }

    /// Each worker's peak memory since the reset.
    fn peaks(&mut self) -> anyhow::Result<Vec<f64>> {
        self.eps
            .iter_mut()
            .map(|e| f(&e.call(&Request::Memory)?, "peak_bytes"))
            .collect()
    }
}

/// The CSV rows of a measured case (reference first, as the case lists its implementations).
fn rows(
    w: &Workers,
    device: &str,
    load1: f64,
    gemm: [f64; 2],
    p: &Parity,
    t: &Timing,
    peak: &[f64],
) -> Vec<Row> {
    let (spec, r) = (w.spec, w.r);
    let mib = 1024.0 * 1024.0;
    let (gflop_dense, gflop_dw) = (p.flops.0 / 1e9, p.flops.1 / 1e9);
    let gflop = gflop_dense + gflop_dw;
    let med: Vec<f64> = t
        .times
        .iter()
        .map(|x| median(x).unwrap_or(f64::NAN))
        .collect();
    let step = |k: usize| (peak[k] - w.base[k]).max(0.0) / mib;
    (0..w.eps.len())
        .map(|i| {
            let g = if spec.impls[i] == Impl::Reference {
                gemm[0]
            } else {
                gemm[1]
            };
            let s = med[i] / 1e3;
            Row {
                case: spec.case.name.clone(),
                precision: format!("{:?}", spec.case.precision).to_lowercase(),
                imp: spec.impls[i].label().to_string(),
                device: device.to_string(),
                batch: spec.case.batch,
                steps_timed: t.times[i].len(),
                median_ms: med[i],
                min_ms: t.times[i].iter().cloned().fold(f64::INFINITY, f64::min),
                max_ms: t.times[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                time_ratio: med[i] / med[r],
                gflop_step: gflop,
                gflop_dense,
                gflops: gflop / s,
                gemm_gflops: g,
                gemm_bound_frac: (gflop_dense / g) / s,
                peak_mib: peak[i] / mib,
                base_mib: w.base[i] / mib,
                step_mib: step(i),
                peak_ratio: peak[i] / peak[r],
                step_mem_ratio: step(i) / step(r).max(1e-9),
                loss_step1: p.losses[i][0],
                loss_diff: p.diffs[i],
                trainable: w.trainable[i],
                load1,
                others_cores: t.others_mean,
                rounds_discarded: t.discarded,
            }
        })
        .collect()
}

/// Runs one case: setup, parity steps, interleaved timed steps, memory. Returns its rows
/// (reference first) and whether the losses agreed.
pub fn run_case(
    spec: &CaseSpec,
    launcher: &Launcher,
    device: &str,
    dir: &Path,
    opts: &StepsOptions,
    gemm: [f64; 2],
) -> anyhow::Result<(Vec<Row>, bool)> {
    let load1 = loadavg()[0];
    let mut w = Workers::start(spec, launcher, device, dir)?;
    let parity = w.parity(opts)?;
    // A reference step of over 20 s on the CPU: 3 rounds are enough.
    let reps = if device == "cpu" && parity.ref_ms > 20_000.0 {
        opts.reps.min(3)
    } else {
        opts.reps
    }
    .max(1);
    let timing = w.timed_rounds(reps)?;
    let peak = w.peaks()?;
    let rows = rows(&w, device, load1, gemm, &parity, &timing, &peak);
    drop(w);
    Ok((rows, parity.ok))
}

/// Profiles one case (`dka bench steps --profile DIR`): setup and parity steps as when timing,
/// then `opts.profile_steps` steps of each implementation under its profiler; writes the
/// traces and `DIR/<case>.csv` (per-step self time per operator, reference against this
/// project's first implementation) and logs the operators this project spends most more in.
pub fn profile_case(
    spec: &CaseSpec,
    launcher: &Launcher,
    device: &str,
    tmp: &Path,
    opts: &StepsOptions,
    dir: &Path,
) -> anyhow::Result<()> {
    use super::profile::{compare, read_trace, slug};
    let mut w = Workers::start(spec, launcher, device, tmp)?;
    let parity = w.parity(opts)?;
    anyhow::ensure!(
        parity.ok,
        "the implementations' losses differ: not profiled"
    );
    let name = slug(&spec.case.name);
    let mut traces = Vec::new();
    for (i, imp) in spec.impls.iter().enumerate() {
        let out = std::fs::canonicalize(dir)?.join(format!("{name}-{}.json", imp.label()));
        let v = w.eps[i].call(&Request::Profile {
            steps: opts.profile_steps,
            out: out.clone(),
        })?;
        tracing::info!("{}: {} profiled steps, {v}", spec.case.name, imp.label());
        traces.push(read_trace(&out)?);
    }
    drop(w);
    let ours = spec
        .impls
        .iter()
        .position(|i| matches!(i, Impl::Ours { checkpoint: false }))
        .context("no plain implementation of this project")?;
    let rows = compare(&traces[0], &traces[ours], opts.profile_steps);
    let csv_path = dir.join(format!("{name}.csv"));
    let mut wtr =
        csv::Writer::from_path(&csv_path).with_context(|| csv_path.display().to_string())?;
    for r in &rows {
        wtr.serialize(r)?;
    }
    wtr.flush()?;
    // How the comparison was made, next to it.
    let meta = serde_json::json!({
        "case": spec.case.name,
        "profiled_steps": opts.profile_steps,
        "after_parity_steps": opts.parity_steps,
        "implementations": spec.impls.iter().map(|i| i.label()).collect::<Vec<_>>(),
        "machine": crate::util::provenance::machine(),
        "note": "self time per step of every operator (cpu_op events of each Chrome trace; \
                 nesting per thread from start and duration); reference: torch.profiler, \
                 this project: libtorch's Kineto profiler; profiler overhead included in both",
    });
    std::fs::write(
        dir.join(format!("{name}.meta.json")),
        serde_json::to_string_pretty(&meta)?,
    )?;
    let sum = |f: fn(&super::profile::CompareRow) -> f64| rows.iter().map(f).sum::<f64>();
    tracing::info!(
        "{}: operator self time per step: pytorch {:.1} ms, dka {:.1} ms; most more in dka:",
        spec.case.name,
        sum(|r| r.self_ms_ref),
        sum(|r| r.self_ms_ours)
    );
    for r in rows.iter().take(8) {
        tracing::info!(
            "  {:<60} {:+8.1} ms ({:.1} vs {:.1} ms; calls {} vs {})",
            r.op,
            r.self_ms_diff,
            r.self_ms_ours,
            r.self_ms_ref,
            r.calls_ours,
            r.calls_ref
        );
    }
    tracing::info!("wrote {}", csv_path.display());
    Ok(())
}
