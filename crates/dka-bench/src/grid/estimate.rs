//! `dka plan` (and `dka grid --plan`): the runs of one or more grids still to do, and an
//! estimate of their time on this device, before anything runs.
//!
//! The estimate: for each distinct (backbone, method, input size, task), a few training steps
//! and evaluation batches are timed here with random weights (the cost does not depend on
//! their values); a run costs `epochs × ceil(train / batch)` steps plus its evaluations (once
//! for `last`, every epoch for `best-test`, the validation split every epoch for `best-val`),
//! plus decoding the splits that are not in the decoded cache yet (once per machine). Where a
//! dataset's folder is absent, the release's nominal size is used (DATASETS.md) and the run
//! ids cannot be known: every run counts as still to do. For ViT backbones the floating-point
//! work is also counted analytically, for a projection to a GPU of a stated throughput.
use crate::config::run::{RunConfig, Selection};
use crate::train::evaluate::EvalSetup;
use crate::train::model::Model;
use crate::train::step::{StepInput, Stepper};
use crate::util::stats::median;
use anyhow::Context;
use dka_core::BackboneConfig;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Sizes of one run's splits (in samples), and whether they come from the data or nominal.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub classes: i64,
    pub segmentation: bool,
    /// Decoding seconds of the splits not yet in the decoded cache.
    pub decode_s: f64,
    pub nominal: bool,
}

/// Nominal release sizes (DATASETS.md) for planning without the data: (samples or cases,
/// classes, segmentation, official test count, slices per case).
fn nominal(dataset: &str) -> Option<(usize, i64, bool, Option<usize>, usize)> {
    Some(match dataset {
        "isic2019" => (25_331, 8, false, None, 1),
        "isic2018" => (2_594, 2, true, Some(1_000), 1),
        "busi-cls" => (780, 3, false, None, 1),
        "busi-seg" => (780, 2, true, None, 1),
        "covid" => (5_144, 3, false, Some(1_288), 1),
        // BraTS-2020: 369 cases, about 60 axial FLAIR slices with tumour each.
        "brats" => (369, 2, true, None, 60),
        _ => return None,
    })
}

/// Decoding cost per image when the data is absent (2 cores, measured by `dka bench data`).
const NOMINAL_DECODE_S: f64 = 0.004;

/// Sizes of `cfg`'s splits from the release's nominal size.
pub fn nominal_sizes(cfg: &RunConfig) -> anyhow::Result<Sizes> {
    let (n, classes, segmentation, official_test, per_case) =
        nominal(&cfg.dataset).with_context(|| {
            format!(
                "no folder for dataset '{}' and no nominal size to plan with",
                cfg.dataset
            )
        })?;
    let r = dka_data::parse_fraction(&cfg.fraction)?;
    let (pool, test) = match official_test {
        Some(t) => (n, t),
        None => {
            let t = (n as f64 * cfg.test_fraction).round() as usize;
            (n - t, t)
        }
    };
    let val = (pool as f64 * cfg.val_fraction).round() as usize;
    let pool = pool - val;
    // Per class max(1, floor(n_c r)): about floor(pool r), at least one per class.
    let strata = if segmentation { 1 } else { classes as usize };
    let train = dka_data::train_count(pool, r).max(strata.min(pool));
    let all = (train + val + test) * per_case;
    Ok(Sizes {
        train: train * per_case,
        val: val * per_case,
        test: test * per_case,
        classes,
        segmentation,
        decode_s: all as f64 * NOMINAL_DECODE_S,
        nominal: true,
    })
}

/// Forward FLOPs per image of a ViT backbone (matmuls and attention; norms and activations
/// left out), `None` for other families.
pub fn vit_forward_flops(backbone: &str, img: u32) -> Option<f64> {
    let BackboneConfig::Vit(c) = BackboneConfig::from_spec(backbone).ok()? else {
        return None;
    };
    let p = c.patch_size as f64;
    let n = (img as f64 / p).powi(2) + f64::from(u8::from(c.class_token));
    let d = c.embed_dim as f64;
    let h = d * c.mlp_ratio;
    let patch = 2.0 * n * 3.0 * p * p * d;
    let block = 2.0 * n * (4.0 * d * d + 2.0 * d * h) + 4.0 * n * n * d;
    Some(patch + c.depth as f64 * block)
}

/// Measured seconds of one training step and one evaluation batch.
#[derive(Debug, Clone, Copy)]
pub struct StepCost {
    pub train_s: f64,
    pub eval_s: f64,
    /// The batch the times are for (measured at a smaller one and scaled on the CPU).
    pub batch: usize,
}

/// Times `steps` training steps (the trainer's own step: activation checkpointing included
/// when the run asks for it) and evaluation batches of `cfg`'s model on `device`. The CPU
/// times a small batch; a GPU the run's batch, halved until a step fits in memory. Times are
/// scaled to the run's batch (compute is linear in it).
pub fn measure(
    cfg: &RunConfig,
    sizes: &Sizes,
    device: Device,
    steps: usize,
) -> anyhow::Result<StepCost> {
    let cfg = RunConfig {
        weights: None,
        ..cfg.clone()
    }
    .resolve(device)?;
    let b = if device.is_cuda() {
        cfg.batch_size
    } else {
        cfg.batch_size.min(4)
    };
    let what = format!("{} {}", cfg.backbone, cfg.method.method().name());
    let (b, (train_s, eval_s)) =
        halving_until_it_fits(b, &what, |b| time_at(&cfg, sizes, device, steps, b))?;
    let scale = cfg.batch_size as f64 / b as f64;
    Ok(StepCost {
        train_s: train_s * scale,
        eval_s: eval_s * scale,
        batch: cfg.batch_size,
    })
}

/// `f` at batch `b`, else at half of it, and so on down to 1 (a CUDA out-of-memory panics
/// through tch: caught, it is that batch size's error); the batch that worked and its result.
fn halving_until_it_fits<T>(
    mut b: usize,
    what: &str,
    mut f: impl FnMut(usize) -> anyhow::Result<T>,
) -> anyhow::Result<(usize, T)> {
    loop {
        match crate::util::panics::catch(|| f(b)) {
            Ok(t) => return Ok((b, t)),
            Err(e) if b > 1 => {
                tracing::warn!(
                    "timing {what} at batch {b} failed ({e:#}); trying batch {}",
                    b / 2
                );
                b /= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Median seconds of a training step and of an evaluation batch at batch `b`.
fn time_at(
    cfg: &RunConfig,
    sizes: &Sizes,
    device: Device,
    steps: usize,
    b: usize,
) -> anyhow::Result<(f64, f64)> {
    let model = Model::build(cfg, sizes.classes, sizes.segmentation, device)?;
    let mut opt = crate::train::optim::Optimizer::new(&cfg.optimizer, model.groups())?;
    let setup = EvalSetup::new(cfg, sizes.classes, device)?;
    let stepper = Stepper {
        model: &model,
        cfg,
        setup: &setup,
    };
    let s = cfg.img_size as i64;
    let x = Tensor::randn([b as i64, 3, s, s], (Kind::Float, device));
    let y = if sizes.segmentation {
        Tensor::randint(sizes.classes, [b as i64, s, s], (Kind::Int64, device))
    } else {
        Tensor::randint(sizes.classes, [b as i64], (Kind::Int64, device))
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // Linear probing trains the head on cached features: only the head's step counts; a
    // frozen stem is cached too, and only what follows it counts.
    let what = crate::train::feature_cache::step_input(cfg, &model);
    let input = match what {
        StepInput::Features => tch::no_grad(|| setup.amp.run(|| model.embed(&x, false))),
        StepInput::Stem => tch::no_grad(|| {
            setup
                .amp
                .run(|| model.backbone.stem(&x).expect("a frozen stem"))
        }),
        StepInput::Images => x.shallow_clone(),
    };
    let mut train = || -> anyhow::Result<f64> {
        sync();
        let t = std::time::Instant::now();
        let _loss = stepper.forward_backward(&opt, None, &input, &y, what)?;
        opt.step(None)?;
        sync();
        Ok(t.elapsed().as_secs_f64())
    };
    train()?;
    let train_times: Vec<f64> = (0..steps.max(1))
        .map(|_| train())
        .collect::<anyhow::Result<_>>()?;
    let eval = || {
        let t = std::time::Instant::now();
        let _ = tch::no_grad(|| {
            setup
                .amp
                .run(|| model.head_logits(&model.embed(&x, false), (s, s), false))
        });
        sync();
        t.elapsed().as_secs_f64()
    };
    eval();
    let eval_times: Vec<f64> = (0..steps.max(1)).map(|_| eval()).collect();
    Ok((
        median(&train_times).unwrap_or(f64::NAN),
        median(&eval_times).unwrap_or(f64::NAN),
    ))
}

/// The estimated seconds of one run: training steps, evaluations and decoding.
pub fn run_seconds(cfg: &RunConfig, sizes: &Sizes, cost: &StepCost) -> f64 {
    let batches = |n: usize| n.div_ceil(cost.batch.max(1)) as f64;
    let epochs = cfg.epochs as f64;
    let frozen = cfg.method.method().frozen_features();
    let train = if frozen {
        // Features once (a forward pass over the training split), then head steps.
        batches(sizes.train) * (cost.eval_s + epochs * cost.train_s)
    } else {
        epochs * batches(sizes.train) * cost.train_s
    };
    let evals = match cfg.selection {
        Selection::Last => batches(sizes.test),
        Selection::BestTest => epochs * batches(sizes.test),
        Selection::BestVal => epochs * batches(sizes.val) + batches(sizes.test),
    } + if cfg.test_every > 0 {
        (cfg.epochs / cfg.test_every) as f64 * batches(sizes.test)
    } else {
        0.0
    };
    train + evals * cost.eval_s
}

/// FLOPs of one run (ViT backbones): training ≈ 3× forward with weight gradients (full
/// fine-tuning), 2× otherwise (input gradients only through the frozen weights), 1× for the
/// features of linear probing; evaluation 1×.
pub fn run_flops(cfg: &RunConfig, sizes: &Sizes) -> Option<f64> {
    let f = vit_forward_flops(&cfg.backbone, cfg.img_size)?;
    let m = cfg.method.method();
    let epochs = cfg.epochs as f64;
    let train = if m.frozen_features() {
        sizes.train as f64 * f
    } else {
        let k = if m.backbone_lr().is_some() { 3.0 } else { 2.0 };
        epochs * sizes.train as f64 * f * k
    };
    let evals = match cfg.selection {
        Selection::Last => sizes.test as f64,
        Selection::BestTest => epochs * sizes.test as f64,
        Selection::BestVal => epochs * sizes.val as f64 + sizes.test as f64,
    };
    Some(train + evals * f)
}

/// One line of the plan: a step signature and its runs still to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanRow {
    pub experiment: String,
    pub backbone: String,
    pub method: String,
    pub img_size: u32,
    pub task: String,
    pub runs: usize,
    pub mean_train_samples: f64,
    pub train_step_s: f64,
    pub eval_batch_s: f64,
    pub hours: f64,
    pub tflop: Option<f64>,
    pub nominal_sizes: bool,
}

/// Groups runs by step signature, measures each once, and sums.
pub fn estimate(
    experiment: &str,
    todo: &[(RunConfig, Sizes)],
    device: Device,
    steps: usize,
) -> anyhow::Result<Vec<PlanRow>> {
    let mut groups: BTreeMap<String, Vec<&(RunConfig, Sizes)>> = BTreeMap::new();
    for r in todo {
        let (c, s) = r;
        let key = format!(
            "{}|{}|{}|{}|{}|{:?}",
            c.backbone,
            serde_json::to_string(&c.method)?,
            c.img_size,
            c.batch_size,
            s.segmentation,
            c.precision
        );
        groups.entry(key).or_default().push(r);
    }
    let bar = crate::util::progress::bar(groups.len() as u64, "timing steps");
    let mut rows = Vec::new();
    for runs in groups.values() {
        let (c0, s0) = runs[0];
        // steps = 0: count only (no model is built or timed).
        let cost = if steps == 0 {
            StepCost {
                train_s: f64::NAN,
                eval_s: f64::NAN,
                batch: c0.batch_size,
            }
        } else {
            // A model that cannot be timed here (out of memory even at batch 1) is reported
            // and left untimed; the other groups are still timed.
            measure(c0, s0, device, steps).unwrap_or_else(|e| {
                tracing::warn!(
                    "timing {} {} failed ({e:#}): its runs are not timed",
                    c0.backbone,
                    c0.method.method().name()
                );
                StepCost {
                    train_s: f64::NAN,
                    eval_s: f64::NAN,
                    batch: c0.batch_size,
                }
            })
        };
        let secs: f64 = runs
            .iter()
            .map(|(c, s)| run_seconds(c, s, &cost) + s.decode_s / runs.len() as f64)
            .sum();
        let flops: Option<f64> = runs.iter().map(|(c, s)| run_flops(c, s)).sum();
        rows.push(PlanRow {
            experiment: experiment.to_string(),
            backbone: c0.backbone.clone(),
            method: c0.method.method().name().to_string(),
            img_size: c0.img_size,
            task: if s0.segmentation {
                "segmentation"
            } else {
                "classification"
            }
            .into(),
            runs: runs.len(),
            mean_train_samples: runs.iter().map(|(_, s)| s.train as f64).sum::<f64>()
                / runs.len() as f64,
            train_step_s: cost.train_s,
            eval_batch_s: cost.eval_s,
            hours: secs / 3600.0,
            tflop: flops.map(|f| f / 1e12),
            nominal_sizes: runs.iter().any(|(_, s)| s.nominal),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Effective throughput assumed for the GPU projection: an H200's dense bf16 peak (989
/// TFLOP/s) at 40 % utilisation.
pub const GPU_TFLOPS: f64 = 400.0;

/// The runs of one or more grids still to do, grouped by step signature, with their estimate.
pub struct Plan {
    pub rows: Vec<PlanRow>,
    pub device: Device,
    /// Runs of the grids in all, and those already done.
    pub total_runs: usize,
    pub done: usize,
}

impl Plan {
    /// Runs still to do.
    pub fn to_do(&self) -> usize {
        self.rows.iter().map(|r| r.runs).sum()
    }

    /// Hours on this device (NaN when nothing was timed).
    pub fn hours(&self) -> f64 {
        self.rows.iter().map(|r| r.hours).sum()
    }

    /// Floating-point work, when every row's is known.
    pub fn tflop(&self) -> Option<f64> {
        self.rows.iter().map(|r| r.tflop).sum()
    }

    /// The plan as a table and a summary, line by line, for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{:<24} {:<12} {:>5} {:<14} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "experiment", "method", "img", "task", "runs", "train n", "s/step", "hours", "TFLOP"
        )];
        for r in &self.rows {
            out.push(format!(
                "{:<24} {:<12} {:>5} {:<14} {:>5} {:>9.0} {:>9.3} {:>9.2} {:>9}{}",
                r.experiment,
                r.method,
                r.img_size,
                r.task,
                r.runs,
                r.mean_train_samples,
                r.train_step_s,
                r.hours,
                r.tflop.map_or("-".into(), |t| format!("{t:.0}")),
                if r.nominal_sizes {
                    " (nominal sizes)"
                } else {
                    ""
                }
            ));
        }
        let (total_runs, done, todo, hours) =
            (self.total_runs, self.done, self.to_do(), self.hours());
        if hours.is_finite() {
            out.push(format!(
                "{total_runs} run(s) in all, {done} done, {todo} to do: about {hours:.1} h on {} (measured here{})",
                crate::util::device::device_name(self.device),
                if self.device.is_cuda() { "" } else { "; the CPU steps were timed at a small batch and scaled" }
            ));
        } else {
            out.push(format!(
                "{total_runs} run(s) in all, {done} done, {todo} to do (not timed: --plan-steps 0)"
            ));
        }
        if let Some(t) = self.tflop() {
            out.push(format!(
                "floating-point work {t:.0} TFLOP: about {:.1} h on a GPU at {GPU_TFLOPS:.0} TFLOP/s effective (an estimate from FLOPs: H200 bf16 dense peak 989 TFLOP/s at 40 % utilisation; data loading not counted)",
                t / GPU_TFLOPS / 3600.0
            ));
        }
        out
    }

    /// Writes the plan as `path` (CSV, one row per step signature) and its summary beside it
    /// (`.json`: totals, the GPU projection, the machine).
    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &self.rows {
            w.serialize(r)?;
        }
        crate::util::fs::write_atomic(path, &w.into_inner()?)?;
        let (hours, tflop) = (self.hours(), self.tflop());
        let summary = serde_json::json!({
            "runs": self.total_runs, "done": self.done, "to_do": self.to_do(),
            "hours_here": hours.is_finite().then_some(hours),
            "device": crate::util::device::device_name(self.device),
            "tflop": tflop, "gpu_hours_estimate": tflop.map(|t| t / GPU_TFLOPS / 3600.0),
            "gpu_assumption": format!("{GPU_TFLOPS} TFLOP/s effective (H200 bf16 dense peak 989 TFLOP/s at 40 % utilisation), from FLOPs, data loading not counted"),
            "nominal_sizes": self.rows.iter().any(|r| r.nominal_sizes),
            "machine": crate::util::provenance::machine(),
        });
        crate::util::fs::write_atomic(
            &path.with_extension("json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_does_not_fit_is_timed_at_half_the_batch() {
        // A libtorch failure above batch 2 (as a CUDA out-of-memory would be).
        let (b, v) = halving_until_it_fits(8, "test", |b| {
            if b > 2 {
                let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
                let _ = a.matmul(&a);
            }
            Ok(b * 10)
        })
        .unwrap();
        assert_eq!((b, v), (2, 20));
        let e = halving_until_it_fits(4, "test", |_| -> anyhow::Result<()> {
            anyhow::bail!("never fits")
        });
        assert!(e.unwrap_err().to_string().contains("never fits"));
    }

    #[test]
    fn the_estimate_times_the_checkpointed_step_the_run_will_take() {
        let d = tempfile::tempdir().unwrap();
        let vit = crate::config::run::tiny_vit_for_tests(d.path(), 16);
        let cfg = RunConfig {
            backbone: vit.clone(),
            img_size: 32,
            batch_size: 8,
            checkpoint_blocks: true,
            ..Default::default()
        };
        let sizes = Sizes {
            train: 16,
            val: 0,
            test: 8,
            classes: 3,
            segmentation: false,
            decode_s: 0.0,
            nominal: false,
        };
        let c = measure(&cfg, &sizes, Device::Cpu, 1).unwrap();
        assert!(c.train_s > 0.0 && c.eval_s > 0.0 && c.batch == 8, "{c:?}");
    }
}
