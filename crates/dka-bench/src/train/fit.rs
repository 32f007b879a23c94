//! The epoch loop: training steps (cached features for linear probing), evaluation only when
//! the selection rule or the curve needs it, and the selected epoch's trained tensors.
//!
//! - `last`: the test set is evaluated once, after the last epoch (and every `test_every`
//!   epochs when asked, for the curve);
//! - `best-val`: the validation split each epoch; the best epoch's tensors are kept and the
//!   test set is evaluated once, on them;
//! - `best-test` (the authors' protocol): the test set each epoch; the best epoch's tensors
//!   are kept.
//!
//! Either way the model is left holding the selected epoch's tensors, so what is saved is what
//! was reported.
use super::checkpoint;
use super::data::{loader, loader_from, to_device, Normalizer, RunData};
use super::feature_cache::FeatureCache;
use super::model::{Model, Snapshot};
use super::RunLog;
use crate::evaluate::{evaluate, primary_metric, EpochRow, EvalSetup, Evaluation, MetricsLog};
use crate::interrupt::{self, Interrupted};
use crate::optim::Optimizer;
use crate::precision::{Amp, LossScaler};
use crate::run_config::{Precision, RunConfig, SegLoss, Selection};
use anyhow::bail;
use anyhow::Context;
use dka_data::{epoch_order, Preprocess};
use dka_data::{CacheOutcome, SplitName};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Pixels of this class are ignored by the loss and the metrics (padding of `longest-side-pad`).
pub const IGNORE_INDEX: i64 = 255;

/// How often, and on how many images, the test set was evaluated.
#[derive(Debug, Clone, Copy, Default)]
struct TestCount {
    evaluations: usize,
    images: usize,
}

/// The libtorch seed of one training step: dropout's randomness depends only on the run's
/// seed, the epoch and the batch, so a resumed run draws what the uninterrupted one would.
fn step_seed(seed: u64, epoch: usize, batch: usize) -> i64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (batch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z >> 1) as i64
}

/// fp16 runs stop after this many steps in a row with non-finite gradients.
const MAX_CONSECUTIVE_SKIPS: usize = 50;

/// What fitting produced.
pub struct Fitted {
    pub selected_epoch: usize,
    /// Test metrics of the selected epoch.
    pub test: Evaluation,
    pub skipped_steps: usize,
    /// How many times the test set was evaluated, and the images that took.
    pub test_evaluations: usize,
    pub test_images: usize,
}

/// Cross-entropy (+ soft Dice for segmentation if asked), ignoring [`IGNORE_INDEX`].
fn loss(logits: &Tensor, y: &Tensor, seg_loss: SegLoss) -> Tensor {
    let ce = logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, IGNORE_INDEX, 0.0);
    if logits.dim() == 2 || seg_loss == SegLoss::Ce {
        return ce;
    }
    let c = logits.size()[1];
    let valid = y.ne(IGNORE_INDEX).unsqueeze(1).to_kind(Kind::Float);
    let p = logits.softmax(1, Kind::Float) * &valid;
    let onehot = y
        .where_scalarother(&y.ne(IGNORE_INDEX), 0)
        .one_hot(c)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        * &valid;
    let dims = [0i64, 2, 3];
    let inter = (&p * &onehot).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let denom = p.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let dice = (inter * 2.0 + 1.0) / (denom + 1.0);
    ce + (1.0 - dice.mean(Kind::Float))
}

/// The decoded splits a run reads.
pub struct Splits {
    pub train: Arc<dka_data::DecodedSplit>,
    pub test: Arc<dka_data::DecodedSplit>,
    /// Only for `best-val` selection.
    pub val: Option<Arc<dka_data::DecodedSplit>>,
    /// What opening them did (for the run's log).
    pub notes: Vec<String>,
}

/// Every split the run reads, decoded once per machine (u8, memory-mapped) at the run's
/// geometry: opened before the run writes anything, so a bad image fails it cleanly.
pub fn open_splits(cfg: &RunConfig, data: &RunData) -> anyhow::Result<Splits> {
    let spec = cfg.input_spec()?;
    let pre: Preprocess = super::data::preprocess(cfg, &spec);
    let mut notes = Vec::new();
    let mut decode = |which: SplitName| -> anyhow::Result<Arc<dka_data::DecodedSplit>> {
        let (split, stats) = data.decoded(which, &pre, cfg.loader_threads)?;
        notes.push(format!(
            "decoded {} split: {} ({} image(s) decoded, {:.1} s, {:.1} MB at {})",
            which.as_str(),
            match stats.outcome {
                CacheOutcome::Reused => "reused from the cache",
                CacheOutcome::Built => "built",
                CacheOutcome::Rebuilt => "rebuilt (the cached copy was broken)",
            },
            stats.decoded,
            stats.seconds,
            stats.bytes as f64 / 1e6,
            stats.dir.display()
        ));
        Ok(split)
    };
    let train = decode(SplitName::Train)?;
    let test = decode(SplitName::Test)?;
    let val = if cfg.selection == Selection::BestVal {
        Some(decode(SplitName::Val)?)
    } else {
        None
    };
    Ok(Splits {
        train,
        test,
        val,
        notes,
    })
}

/// Trains `model` on the training split for `cfg.epochs` and leaves it holding the selected
/// epoch's tensors.
pub fn fit(
    cfg: &RunConfig,
    model: &Model,
    data: &RunData,
    splits: Splits,
    log: &mut RunLog,
    dir: &Path,
    device: Device,
) -> anyhow::Result<Fitted> {
    let segmentation = model.segmentation;
    let spec = cfg.input_spec()?;
    let pad = spec.resize == dka_core::input::ResizeMode::LongestSidePad;
    let normalizer = Normalizer::new(&spec, device);
    let amp = Amp::new(cfg.precision, device);
    let size = (cfg.img_size as i64, cfg.img_size as i64);
    let classes = data.ds.task().classes().len() as i64;
    let setup = EvalSetup {
        normalizer: &normalizer,
        amp,
        classes,
        size,
        device,
        pad,
    };
    let augment = cfg.augment.then(dka_data::Augment::default);

    let Splits {
        train: train_split,
        test: test_split,
        val: val_split,
        ..
    } = splits;
    let method = cfg.method.method();
    let cache = if method.frozen_features() {
        let c = FeatureCache::build(model, &train_split, pad, cfg, &normalizer, amp, device)?;
        log.note(&format!(
            "{}: frozen features of {} training samples cached once ({:?}, host memory)",
            method.name(),
            c.len(),
            c.kind()
        ));
        Some(c)
    } else {
        None
    };
    let groups = model.groups();
    let [head_n, adapter_n, backbone_n] = groups.counts();
    log.note(&format!(
        "trainable: head {head_n} at lr {}, adapter {adapter_n} at lr {}, backbone {backbone_n} at lr {}; weight decay {}",
        cfg.optimizer.head_lr,
        cfg.optimizer.adapter_lr,
        cfg.optimizer
            .backbone_lr
            .map_or("-".to_string(), |v| v.to_string()),
        cfg.optimizer.weight_decay
    ));
    let mut opt = Optimizer::new(&cfg.optimizer, groups)?;
    let mut scaler = (cfg.precision == Precision::Fp16).then(LossScaler::default);

    // Resume from a checkpoint of this run, if there is one.
    let config_sha = checkpoint::config_sha256(cfg)?;
    let resumed = checkpoint::load(dir, &config_sha)?;
    let mut best: Option<(f64, usize, Snapshot, Option<Evaluation>)> = None;
    let mut last_test: Option<Evaluation> = None;
    let mut tests = TestCount::default();
    let (mut start_epoch, mut first_batch, mut carry) = (0usize, 0usize, (0.0f64, 0usize));
    let mut elapsed = 0.0;
    if let Some(ck) = &resumed {
        let st = &ck.state;
        model.restore(&Snapshot::from_tensors(ck.part("model")));
        opt.load_state(&ck.part("optim"))?;
        if let (Some(s), Some(saved)) = (scaler.as_mut(), st.scaler) {
            s.restore(saved);
        }
        best = st.best.as_ref().map(|(score, epoch, test)| {
            (
                *score,
                *epoch,
                Snapshot::from_tensors(ck.part("best")),
                test.clone().map(Evaluation::from_values),
            )
        });
        last_test = st.last_test.clone().map(Evaluation::from_values);
        tests = TestCount {
            evaluations: st.test_evaluations,
            images: st.test_images,
        };
        (start_epoch, first_batch, carry) = (st.epoch, st.next_batch, (st.loss_sum, st.loss_steps));
        elapsed = st.seconds;
        log.note(&format!(
            "resumed from the checkpoint at epoch {start_epoch}, batch {first_batch}"
        ));
    }
    let metrics_path = dir.join("metrics.csv");
    let mut csv = if resumed.is_some() {
        MetricsLog::resume(&metrics_path, segmentation, start_epoch)?
    } else {
        MetricsLog::create(&metrics_path, segmentation)?
    };
    let all = |s: &dka_data::DecodedSplit| -> Vec<usize> { (0..s.len()).collect() };
    let eval_test = |m: &Model, tests: &mut TestCount| -> anyhow::Result<Evaluation> {
        let (e, n) = evaluate(
            m,
            loader(&test_split, all(&test_split), None, cfg, 0)?,
            &test_split,
            &setup,
        )?;
        tests.evaluations += 1;
        tests.images += n;
        Ok(e)
    };
    let state_bytes: i64 = model.groups().counts().iter().sum::<i64>()
        * 4
        * if best.is_some() || cfg.selection != Selection::Last {
            4
        } else {
            3
        };
    let mut last_saved = std::time::Instant::now();
    let run_started = std::time::Instant::now();
    let save = |epoch: usize,
                next_batch: usize,
                loss: (f64, usize),
                opt: &Optimizer,
                scaler: &Option<LossScaler>,
                best: &Option<(f64, usize, Snapshot, Option<Evaluation>)>,
                last_test: &Option<Evaluation>,
                tests: &TestCount|
     -> anyhow::Result<()> {
        let state = checkpoint::State {
            config_sha256: config_sha.clone(),
            epoch,
            next_batch,
            loss_sum: loss.0,
            loss_steps: loss.1,
            scaler: scaler.as_ref().map(LossScaler::state),
            best: best
                .as_ref()
                .map(|(s, e, _, t)| (*s, *e, t.as_ref().map(Evaluation::values))),
            last_test: last_test.as_ref().map(Evaluation::values),
            test_evaluations: tests.evaluations,
            test_images: tests.images,
            seconds: elapsed + run_started.elapsed().as_secs_f64(),
        };
        let mut tensors: Vec<(String, Tensor)> = model
            .snapshot()
            .tensors()
            .map(|(n, t)| (format!("model/{n}"), t.shallow_clone()))
            .collect();
        tensors.extend(
            opt.state()
                .into_iter()
                .map(|(n, t)| (format!("optim/{n}"), t)),
        );
        if let Some((_, _, snap, _)) = best {
            tensors.extend(
                snap.tensors()
                    .map(|(n, t)| (format!("best/{n}"), t.shallow_clone())),
            );
        }
        checkpoint::save(dir, &state, &tensors)
    };
    let interrupted = |signal: i32, epoch: usize, batch: usize| -> anyhow::Error {
        anyhow::Error::new(Interrupted {
            signal,
            resume_at: format!("epoch {epoch}, batch {batch} ({})", dir.display()),
        })
    };

    let bar = crate::progress::bar(cfg.epochs as u64, "epochs");
    bar.set_position(start_epoch as u64);
    for epoch in start_epoch..cfg.epochs {
        let started = std::time::Instant::now();
        opt.set_epoch(epoch, cfg.epochs)?;
        let first = if epoch == start_epoch { first_batch } else { 0 };
        let (mut sum, mut steps) = if epoch == start_epoch {
            carry
        } else {
            (0.0, 0)
        };
        let mut batch = first;
        // One training step; afterwards, a pending signal saves a checkpoint and stops.
        let step = |input: &Tensor,
                    y: &Tensor,
                    cached: bool,
                    sum: &mut f64,
                    steps: &mut usize,
                    opt: &mut Optimizer,
                    scaler: &mut Option<LossScaler>|
         -> anyhow::Result<()> {
            let v = if cfg.checkpoint_blocks && !cached {
                // The backbone runs its own backward (activation checkpointing): gradients are
                // cleared first; a non-finite fp32 loss still stops the run before any update.
                opt.zero_grad()?;
                let mut value = f64::NAN;
                let _detached_loss = amp.run(|| {
                    model.backbone.forward_backward(input, true, true, |f| {
                        let logits = model
                            .head_logits(&model.embed_features(f), size, true)
                            .to_kind(Kind::Float);
                        let l = loss(&logits, y, cfg.seg_loss);
                        value = l.double_value(&[]);
                        match scaler.as_mut() {
                            Some(s) => s.scaled(&l),
                            None => l,
                        }
                    })
                });
                value
            } else {
                let logits = amp
                    .run(|| {
                        if cached {
                            model.head_logits(input, size, true)
                        } else {
                            model.head_logits(&model.embed(input, true), size, true)
                        }
                    })
                    .to_kind(Kind::Float);
                let l = loss(&logits, y, cfg.seg_loss);
                let v = l.double_value(&[]);
                if v.is_finite() || scaler.is_some() {
                    opt.zero_grad()?;
                    match scaler.as_mut() {
                        Some(s) => s.scaled(&l).backward(),
                        None => l.backward(),
                    }
                }
                v
            };
            if !v.is_finite() && scaler.is_none() {
                bail!(
                    "epoch {epoch}, step {}: the loss is {v} ({:?}); the run stops \
                     (metrics.csv keeps every finished epoch)",
                    *steps,
                    cfg.precision
                );
            }
            let outcome = opt.step(scaler.as_mut())?;
            if let Some(s) = scaler.as_ref() {
                if s.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                    bail!(
                        "epoch {epoch}: {MAX_CONSECUTIVE_SKIPS} fp16 steps in a row had \
                         non-finite gradients (loss scale now {}); the run stops",
                        s.scale()
                    );
                }
            }
            if !outcome.skipped {
                *sum += v;
                *steps += 1;
            }
            Ok(())
        };
        match &cache {
            Some(c) => {
                let order = epoch_order(&(0..c.len()).collect::<Vec<_>>(), cfg.seed, epoch as u64);
                for chunk in order.chunks(cfg.batch_size).skip(first) {
                    tch::manual_seed(step_seed(cfg.seed, epoch, batch));
                    let (e, y) = c.batch(chunk, device);
                    step(&e, &y, true, &mut sum, &mut steps, &mut opt, &mut scaler)?;
                    batch += 1;
                    if let Some(sig) = interrupt::requested() {
                        save(
                            epoch,
                            batch,
                            (sum, steps),
                            &opt,
                            &scaler,
                            &best,
                            &last_test,
                            &tests,
                        )?;
                        return Err(interrupted(sig, epoch, batch));
                    }
                }
            }
            None => {
                let order = epoch_order(&all(&train_split), cfg.seed, epoch as u64);
                // Augmented crops move the padding: normalise whole images then.
                let pad_now = pad && augment.is_none();
                let batches = loader_from(&train_split, order, augment, cfg, epoch as u64, first)?;
                for b in batches {
                    let b = b.map_err(|e| anyhow::anyhow!("epoch {epoch}: {e}"))?;
                    tch::manual_seed(step_seed(cfg.seed, epoch, batch));
                    let (x, y, valid) = to_device(&b, &train_split, pad_now, device);
                    let x = normalizer.apply(&x, valid.as_ref());
                    step(&x, &y, false, &mut sum, &mut steps, &mut opt, &mut scaler)?;
                    batch += 1;
                    if let Some(sig) = interrupt::requested() {
                        save(
                            epoch,
                            batch,
                            (sum, steps),
                            &opt,
                            &scaler,
                            &best,
                            &last_test,
                            &tests,
                        )?;
                        return Err(interrupted(sig, epoch, batch));
                    }
                }
            }
        }
        let train_loss = sum / steps.max(1) as f64;
        let last = epoch + 1 == cfg.epochs;
        let val = match &val_split {
            Some(v) => Some(evaluate(model, loader(v, all(v), None, cfg, 0)?, v, &setup)?.0),
            None => None,
        };
        let test_now = match cfg.selection {
            Selection::BestTest => true,
            Selection::Last => last,
            Selection::BestVal => false,
        } || (cfg.test_every > 0 && (epoch + 1) % cfg.test_every == 0);
        let test = if test_now {
            Some(eval_test(model, &mut tests)?)
        } else {
            None
        };
        let score = match cfg.selection {
            Selection::BestVal => val.as_ref().map(|v| v.primary(segmentation)),
            Selection::BestTest => test.as_ref().map(|t| t.primary(segmentation)),
            Selection::Last => None,
        };
        if let Some(s) = score {
            // The first epoch always counts; later ones only when strictly better (NaN never).
            let better = best.as_ref().is_none_or(|(b, ..)| s > *b || b.is_nan());
            if better {
                best = Some((s, epoch, model.snapshot(), test.clone()));
            }
        }
        csv.append(&EpochRow {
            epoch,
            train_loss,
            lr_factor: opt.factor(epoch, cfg.epochs),
            skipped_steps: scaler.as_ref().map_or(0, |s| s.skipped),
            seconds: started.elapsed().as_secs_f64(),
            val: val.as_ref(),
            test: test.as_ref(),
        })?;
        log.note(&format!(
            "epoch {epoch}: train loss {train_loss:.4}{}{} ({:.1} s)",
            val.as_ref()
                .map(|v| format!(
                    ", val {} {:.4}",
                    primary_metric(segmentation),
                    v.primary(segmentation)
                ))
                .unwrap_or_default(),
            test.as_ref()
                .map(|t| format!(
                    ", test {} {:.4}",
                    primary_metric(segmentation),
                    t.primary(segmentation)
                ))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        ));
        if test.is_some() {
            last_test = test;
        }
        bar.inc(1);
        let signal = interrupt::requested();
        // Checkpoints cost a write: at most every 10 s (a minute for large states), so a
        // SIGKILL loses that much work, or the epoch in flight when epochs are longer.
        let every = if state_bytes < (256 << 20) { 10 } else { 60 };
        if signal.is_some() || last_saved.elapsed().as_secs() >= every || last {
            save(
                epoch + 1,
                0,
                (0.0, 0),
                &opt,
                &scaler,
                &best,
                &last_test,
                &tests,
            )?;
            last_saved = std::time::Instant::now();
        }
        if let Some(sig) = signal {
            return Err(interrupted(sig, epoch + 1, 0));
        }
    }
    bar.finish_and_clear();

    let (selected_epoch, test) = match (cfg.selection, best) {
        (Selection::Last, _) => (
            cfg.epochs - 1,
            last_test.context("the last epoch evaluates the test set")?,
        ),
        (Selection::BestTest, Some((_, epoch, snap, test))) => {
            model.restore(&snap);
            (
                epoch,
                test.context("best-test evaluates the test set each epoch")?,
            )
        }
        (Selection::BestVal, Some((_, epoch, snap, test))) => {
            model.restore(&snap);
            // Tested that epoch already (test_every) or now, once.
            let test = match test {
                Some(t) => t,
                None => eval_test(model, &mut tests)?,
            };
            (epoch, test)
        }
        (_, None) => bail!("no epoch produced a selection score"),
    };
    let TestCount {
        evaluations: test_evaluations,
        images: test_images,
    } = tests;
    log.note(&format!(
        "selection {}: epoch {selected_epoch}, test {} {:.4}; the test set was evaluated \
         {test_evaluations} time(s) ({test_images} images)",
        super::selection_name(cfg.selection),
        primary_metric(segmentation),
        test.primary(segmentation)
    ));
    Ok(Fitted {
        selected_epoch,
        test,
        skipped_steps: scaler.as_ref().map_or(0, |s| s.skipped),
        test_evaluations,
        test_images,
    })
}
