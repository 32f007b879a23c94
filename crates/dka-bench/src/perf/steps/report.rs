//! The report of `dka bench steps`: the targets of issue #13 checked against the rows, the
//! `.meta.json` sidecar (machine, commit, load, definitions, targets met or missed) and the
//! bar chart of the ratios to the PyTorch reference.
use super::{CaseSpec, Row, StepsOptions};
use crate::report::plots::style::PALETTE;
use crate::util::fonts::FAMILY;
use plotters::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// One target and how the rows meet it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub what: String,
    pub limit: String,
    pub value: String,
    /// `None` when the rows lack the cases it needs.
    pub met: Option<bool>,
}

fn row<'a>(rows: &'a [Row], case: &str, imp: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.case.contains(case) && r.imp == imp)
}

fn target(what: &str, limit: &str, value: Option<(f64, bool)>, fmt: &str) -> Target {
    Target {
        what: what.into(),
        limit: limit.into(),
        value: value.map_or("not measured".into(), |(v, _)| match fmt {
            "x" => format!("{v:.3}x"),
            "%" => format!("{:.0} %", 100.0 * v),
            _ => format!("{v:.1e}"),
        }),
        met: value.map(|(_, ok)| ok),
    }
}

/// The targets, checked on `rows` (this project's plain implementation unless the
/// target is about memory at 64x64, where the checkpointed one counts when present).
pub fn targets(rows: &[Row]) -> Vec<Target> {
    // The targets are fp32's; bf16 rows are summed up by [`bf16_lines`].
    let fp32: Vec<Row> = rows
        .iter()
        .filter(|r| r.precision == "fp32")
        .cloned()
        .collect();
    let rows = &fp32[..];
    let ours = |case: &str| row(rows, case, "dka");
    let vs_adapter = |d: &str, adapter: &str, limit: f64| {
        let (a, b) = (
            ours(&format!("224 b8 adapter {adapter}"))?,
            ours(&format!("224 b8 dka {d}"))?,
        );
        let v = b.median_ms / a.median_ms;
        Some((v, v <= limit))
    };
    let ratio = |case: &str, limit: f64| {
        let r = ours(case)?;
        Some((r.time_ratio, r.time_ratio <= limit))
    };
    let mut t = vec![
        target(
            "DKA d16 step / Adapter (d64) step (ViT-B/16, this project)",
            "<= 1.02",
            vs_adapter("d16", "d64", 1.02),
            "x",
        ),
        target(
            "DKA d192 step / Adapter (d64) step (ViT-B/16, this project)",
            "<= 1.1",
            vs_adapter("d192", "d64", 1.1),
            "x",
        ),
        target(
            "DKA d192 step / Adapter d192 step (same width: what the convolutions cost)",
            "<= 1.1 (the limit above, at equal width)",
            vs_adapter("d192", "d192", 1.1),
            "x",
        ),
        target(
            "frozen-backbone step (linear probing) as a fraction of the GEMM-bound limit",
            ">= 90 %",
            ours("224 b8 linear").map(|r| (r.gemm_bound_frac, r.gemm_bound_frac >= 0.9)),
            "%",
        ),
        target(
            "DKA layer stack 32x32, time / reference",
            "<= 0.1",
            ratio("stack d192 32x32", 0.1),
            "x",
        ),
        target(
            "DKA layer stack 64x64, time / reference",
            "<= 0.1",
            ratio("stack d192 64x64", 0.1),
            "x",
        ),
        target(
            "ResNet-50 + DKA, time / reference",
            "<= 0.3",
            ratio("resnet50", 0.3),
            "x",
        ),
    ];
    let plain: Vec<&Row> = rows.iter().filter(|r| r.imp == "dka").collect();
    if !plain.is_empty() {
        let worst = plain
            .iter()
            .map(|r| r.time_ratio)
            .fold(f64::NEG_INFINITY, f64::max);
        t.push(target(
            "no case slower than the reference (largest time ratio)",
            "<= 1",
            Some((worst, worst <= 1.0)),
            "x",
        ));
        // Memory: the leanest of this project's variants of each case.
        let mut cases: Vec<&str> = plain.iter().map(|r| r.case.as_str()).collect();
        cases.dedup();
        let leanest = |case: &str| {
            rows.iter()
                .filter(|r| r.case == case && r.imp != "pytorch")
                .map(|r| r.peak_ratio)
                .fold(f64::INFINITY, f64::min)
        };
        let worst_mem = cases
            .iter()
            .map(|c| leanest(c))
            .fold(f64::NEG_INFINITY, f64::max);
        t.push(target(
            "peak memory <= the reference's in every case (largest peak ratio, leanest variant)",
            "<= 1",
            Some((worst_mem, worst_mem <= 1.0)),
            "x",
        ));
        if let Some(c) = cases.iter().find(|c| c.contains("64x64")) {
            let v = leanest(c);
            t.push(target(
                "DKA at 64x64: peak memory / reference (leanest variant)",
                "<= 0.7",
                Some((v, v <= 0.7)),
                "x",
            ));
        }
        let worst_loss = rows.iter().map(|r| r.loss_diff).fold(0.0, f64::max);
        t.push(target(
            "identical losses on the parity steps (largest relative difference)",
            "round-off (<= 1e-4)",
            Some((worst_loss, worst_loss <= 1e-4)),
            "e",
        ));
    }
    t
}

/// One line per target, for the log.
pub fn summary(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = targets(rows)
        .into_iter()
        .map(|t| {
            let mark = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            format!("target {}: {} ({}) {}", t.what, t.value, t.limit, mark)
        })
        .collect();
    out.extend(bf16_lines(rows));
    out
}

/// One line per bf16 case: this project's step / eager PyTorch's (both bf16 autocast), and
/// bf16 / fp32 for each implementation when the fp32 case was measured too.
pub fn bf16_lines(rows: &[Row]) -> Vec<String> {
    let find = |case: &str, imp: &str| rows.iter().find(|r| r.case == case && r.imp == imp);
    rows.iter()
        .filter(|r| r.precision == "bf16" && r.imp == "dka")
        .map(|r| {
            let fp32_case = r.case.trim_end_matches(" bf16");
            let vs = |imp: &str| match (find(&r.case, imp), find(fp32_case, imp)) {
                (Some(b), Some(f)) => format!("{:.2}x", b.median_ms / f.median_ms),
                _ => "-".into(),
            };
            format!(
                "bf16 {}: dka / pytorch {:.3}x; bf16 / fp32: dka {}, pytorch {}",
                fp32_case,
                r.time_ratio,
                vs("dka"),
                vs("pytorch")
            )
        })
        .collect()
}

/// The `.meta.json` sidecar.
#[allow(clippy::too_many_arguments)]
pub fn meta(
    args: &StepsOptions,
    rows: &[Row],
    specs: &[CaseSpec],
    gemm: [f64; 2],
    gemm_n: i64,
    reference_info: Value,
    load: [[f64; 3]; 2],
    seconds: f64,
) -> Value {
    json!({
        "what": "one training step (zero-grad, forward, loss, backward, optimiser step with clipping) of this project against a PyTorch-eager reference written as a researcher would (benches/reference/steps.py: timm backbone, nn.Conv2d 51x51 depthwise, LoRA by hand, Houlsby Adapter), same weights and batch (exported through safetensors), dropout off, fp32",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::util::provenance::machine(),
        "reference": reference_info,
        "load_average": {"start": load[0], "end": load[1],
            "note": "1/5/15-minute load averages of the machine (shared: other processes' work slows both implementations alike, since their steps alternate)"},
        "seconds": seconds,
        "gemm_gflops": {"pytorch": gemm[0], "dka": gemm[1], "size": gemm_n,
            "note": "fp32 n x n matmul, median of interleaved rounds, in each implementation's own process"},
        "protocol": {
            "parity_steps": args.parity_steps, "reps": args.reps, "loss_tol": args.loss_tol,
            "threads": args.threads.map_or("libtorch's default (the CPU cores)".to_string(), |n| n.to_string()),
            "subnormals": if args.keep_subnormals { "kept" } else { "flushed to zero in both implementations (torch.set_flush_denormal(True) / MXCSR FTZ+DAZ), set before either starts its thread pool: arithmetic on subnormals is many times slower on x86 and whether a step meets them depends on the weights and data (from random weights the reference's 51x51 depthwise convolutions met them in their first steps and ran up to 8x slower)" },
            "timing": "each implementation in its own process; steps interleaved (A B A B ..., order rotated every round) after the parity steps; median, min, max over the timed rounds (3 when a reference step exceeds 20 s on the CPU); a round during which the machine's other processes used more than 0.25 cores on average (busy time from /proc/stat minus the bench's own processes) is discarded and run again, at most 2 x reps times (rounds_discarded, others_cores in the CSV); the device is synchronised before and after each step",
            "memory": "CPU: VmHWM of the process (reset with /proc/self/clear_refs after setup, so loading the weights does not count; the interpreter's or binary's libraries and the frozen weights do), base = resident set after setup; CUDA: caching allocator's peak allocated bytes since the reset after setup, base = allocated after setup",
            "flops": "counted on the reference's first step with a TorchDispatchMode over PyTorch's flop formulas (matmuls, attention, convolutions; depthwise convolutions at their direct cost); gflop_dense excludes depthwise convolutions; gemm_bound_frac = (gflop_dense / gemm_gflops) / median time",
            "linear": "this project caches frozen features once per run (the trainer's FeatureCache); the linear-probing row times a step that computes them (no autograd), i.e. what the first epoch costs",
        },
        "cases": specs.iter().map(|s| json!({
            "case": s.case,
            "implementations": s.impls.iter().map(|i| i.label()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": targets(rows),
    })
}

/// Two panels: step time and peak memory of this project's variants as ratios to the
/// reference (log scale, 1 = as fast / as large as PyTorch).
pub fn plot(path: &Path, rows: &[Row], device: &str) -> anyhow::Result<()> {
    if !crate::util::fonts::available() {
        tracing::warn!(
            "{}",
            crate::util::fonts::missing_warning(&path.display().to_string())
        );
        return Ok(());
    }
    let mut cases: Vec<String> = Vec::new();
    for r in rows {
        if !cases.contains(&r.case) {
            cases.push(r.case.clone());
        }
    }
    let variants = ["dka", "dka+ckpt"];
    let colors = [PALETTE[0], PALETTE[1]];
    let root = BitMapBackend::new(path, (1400, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "dka vs PyTorch eager (timm): one training step, ratio to PyTorch ({device}; lower is better)"
    );
    let root = root.titled(&title, (FAMILY, 20))?;
    let panels = root.split_evenly((1, 2));
    for (k, area) in panels.iter().enumerate() {
        let value = |r: &Row| if k == 0 { r.time_ratio } else { r.peak_ratio };
        let vals: Vec<f64> = rows
            .iter()
            .filter(|r| r.imp != "pytorch")
            .map(value)
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = vals.iter().cloned().fold(1.0, f64::min).min(0.5) * 0.7;
        let hi = vals.iter().cloned().fold(1.0, f64::max) * 1.4;
        let n = cases.len() as f64;
        // Horizontal bars: one row per case, one bar per variant.
        let mut ch = ChartBuilder::on(area)
            .caption(
                if k == 0 {
                    "step time / PyTorch's"
                } else {
                    "peak memory / PyTorch's"
                },
                (FAMILY, 18),
            )
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(if k == 0 { 250 } else { 10 })
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)?;
        let labels = cases.clone();
        ch.configure_mesh()
            .disable_y_mesh()
            .y_labels(cases.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (n - y - 0.5).round();
                if k == 0
                    && (n - y - 0.5 - i).abs() < 1e-6
                    && i >= 0.0
                    && (i as usize) < labels.len()
                {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_desc(if k == 0 {
                "time ratio (log scale)"
            } else {
                "memory ratio (log scale)"
            })
            .x_labels(8)
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .draw()?;
        for (vi, variant) in variants.iter().enumerate() {
            let bars: Vec<(usize, f64)> = cases
                .iter()
                .enumerate()
                .filter_map(|(ci, c)| {
                    rows.iter()
                        .find(|r| &r.case == c && r.imp == *variant)
                        .map(|r| (ci, value(r)))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            let color = colors[vi];
            ch.draw_series(bars.iter().map(|&(ci, v)| {
                let top = n - ci as f64 - 0.1 - 0.4 * vi as f64;
                Rectangle::new([(lo, top - 0.38), (v.max(lo), top)], color.filled())
            }))?
            .label(*variant)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
            ch.draw_series(bars.iter().map(|&(ci, v)| {
                let top = n - ci as f64 - 0.1 - 0.4 * vi as f64;
                Text::new(
                    format!("{v:.2}"),
                    (v.max(lo) * 1.03, top - 0.3),
                    (FAMILY, 13).into_font().color(&BLACK),
                )
            }))?;
        }
        ch.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0.0), (1.0, n)],
            BLACK.stroke_width(2),
        )))?;
        ch.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
