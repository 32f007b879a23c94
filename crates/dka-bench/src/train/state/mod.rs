//! A run in progress: what stays fixed while it trains ([`Fixed`]) and what changes from step
//! to step ([`TrainState`]: optimiser, loss scaler, the selection's best epoch, the position in
//! the run), with the loop's steps as named functions: resume, train an epoch, one step,
//! evaluate, select, checkpoint, finish. Everything a checkpoint saves is a field here, so a
//! resumed run computes what the uninterrupted one would have.
use super::checkpoint;
use super::data::{loader_from, to_device};
use super::evaluate::Evaluation;
use super::fit::Fitted;
use super::log::RunLog;
use super::model::Snapshot;
use super::optim::Optimizer;
use super::precision::LossScaler;
use super::step::{StepInput, Stepper};
use crate::config::metrics::primary_metric;
use crate::config::run::{Precision, Selection};
use crate::util::interrupt::{self, Interrupted};
use anyhow::{bail, Context};
use dka_data::epoch_order;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

mod fixed;
mod persist;

pub use fixed::Fixed;

/// fp16 runs stop after this many steps in a row with non-finite gradients.
const MAX_CONSECUTIVE_SKIPS: usize = 50;

/// fp32 and bf16 runs read their summed loss back from the device every this many steps (and
/// at the end of each epoch) and stop when it is not finite; in between no step waits for the
/// device.
const LOSS_CHECK_EVERY: usize = 32;

/// The libtorch seed of one training step: dropout's randomness depends only on the run's
/// seed, the epoch and the batch, so a resumed run draws what the uninterrupted one would.
fn step_seed(seed: u64, epoch: usize, batch: usize) -> i64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (batch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z >> 1) as i64
}

/// How often, and on how many images, the test set was evaluated.
#[derive(Debug, Clone, Copy, Default)]
struct TestCount {
    evaluations: usize,
    images: usize,
}

/// The selection's best epoch so far: its score, index, tensors and (when tested) test metrics.
struct Best {
    score: f64,
    epoch: usize,
    snapshot: Snapshot,
    test: Option<Evaluation>,
}

/// A run's state from step to step.
pub struct TrainState<'a> {
    fx: Fixed<'a>,
    opt: Optimizer,
    scaler: Option<LossScaler>,
    best: Option<Best>,
    last_test: Option<Evaluation>,
    tests: TestCount,
    /// The epoch in progress (or next), and how many of its batches are done.
    epoch: usize,
    next_batch: usize,
    /// The training loss summed over this epoch's steps so far (f64, on the device), and
    /// their count.
    loss_sum: Tensor,
    loss_steps: usize,
    /// Training images of this epoch seen by this process.
    images: usize,
    /// The step bar of the epoch in progress (hidden off a terminal).
    bar: indicatif::ProgressBar,
    /// Seconds trained before this process (a resumed run).
    seconds_before: f64,
    started: Instant,
    last_saved: Instant,
    config_sha: String,
    /// `DKA_TRACE`: which of this process's steps go under libtorch's profiler, and where.
    trace: Option<crate::util::profiler::StepTracer>,
}

impl<'a> TrainState<'a> {
    /// A fresh run: the optimiser over the model's trainable groups (logged), the fp16 scaler.
    pub fn new(fx: Fixed<'a>, log: &mut RunLog) -> anyhow::Result<Self> {
        let cfg = fx.cfg;
        let groups = fx.model.groups();
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
        Ok(Self {
            opt: Optimizer::new(&cfg.optimizer, groups)?,
            scaler: (cfg.precision == Precision::Fp16).then(LossScaler::default),
            best: None,
            last_test: None,
            tests: TestCount::default(),
            epoch: 0,
            next_batch: 0,
            loss_sum: Tensor::zeros([], (Kind::Double, fx.setup.device)),
            loss_steps: 0,
            images: 0,
            bar: indicatif::ProgressBar::hidden(),
            seconds_before: 0.0,
            started: Instant::now(),
            last_saved: Instant::now(),
            config_sha: checkpoint::config_sha256(cfg)?,
            trace: crate::util::profiler::StepTracer::from_env()?,
            fx,
        })
    }

    /// The epoch in progress (or the next one).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Trains the epoch in progress from its next batch; returns its mean training loss. A
    /// pending signal after a step saves a checkpoint and stops the run.
    pub fn train_epoch(&mut self) -> anyhow::Result<f64> {
        let (cfg, epoch) = (self.fx.cfg, self.epoch);
        self.opt.set_epoch(epoch, cfg.epochs)?;
        self.bar = crate::util::progress::styled(
            self.fx.batches() as u64,
            &format!(
                "{{spinner}} epoch {}/{} {{bar:30}} {{pos}}/{{len}} steps, loss {{msg}} [{{elapsed}} < {{eta}}]",
                epoch + 1,
                cfg.epochs
            ),
        );
        self.bar.set_position(self.next_batch as u64);
        self.bar.set_message("-");
        let device = self.fx.setup.device;
        if let Some(c) = &self.fx.cache {
            let what = c.what();
            let order = epoch_order(&(0..c.len()).collect::<Vec<_>>(), cfg.seed, epoch as u64);
            let chunks: Vec<Vec<usize>> = order
                .chunks(cfg.batch_size)
                .skip(self.next_batch)
                .map(<[usize]>::to_vec)
                .collect();
            for chunk in chunks {
                tch::manual_seed(step_seed(cfg.seed, epoch, self.next_batch));
                let (e, y) = self
                    .fx
                    .cache
                    .as_ref()
                    .expect("cached")
                    .batch(&chunk, device);
                self.step(&e, &y, what)?;
                self.after_batch()?;
            }
        } else {
            let train = self.fx.splits.train.clone();
            let order = epoch_order(
                &(0..train.len()).collect::<Vec<_>>(),
                cfg.seed,
                epoch as u64,
            );
            // Augmented crops move the padding: normalise whole images then.
            let pad_now = self.fx.setup.pad && self.fx.augment.is_none();
            let batches = loader_from(
                &train,
                order,
                self.fx.augment,
                cfg,
                epoch as u64,
                self.next_batch,
            )?;
            for b in batches {
                let b = b.map_err(|e| anyhow::anyhow!("epoch {epoch}: {e}"))?;
                tch::manual_seed(step_seed(cfg.seed, epoch, self.next_batch));
                let (x, y, valid) = to_device(&b, &train, pad_now, device);
                let x = self.fx.setup.normalizer.apply(&x, valid.as_ref());
                self.step(&x, &y, StepInput::Images)?;
                self.after_batch()?;
            }
        }
        // The one read of the epoch's loss (and, for fp32/bf16, its last finiteness check).
        let sum = self.check_loss()?;
        crate::util::progress::done(&self.bar);
        Ok(sum / self.loss_steps.max(1) as f64)
    }

    /// One training step: forward, backward, the optimiser's update (skipped by the fp16
    /// scaler when the gradients are not finite). The loss is added up on the device; fp32 and
    /// bf16 runs stop at the next check when it is not finite.
    fn step(&mut self, input: &Tensor, y: &Tensor, what: StepInput) -> anyhow::Result<()> {
        if let Some(t) = &self.trace {
            t.before_step()?;
        }
        self.step_inner(input, y, what)?;
        let (dir, device) = (self.fx.dir, self.fx.setup.device);
        match &mut self.trace {
            Some(t) => {
                let id = dir
                    .file_name()
                    .map_or("run".into(), |s| s.to_string_lossy());
                t.after_step(&id, || {
                    if let Device::Cuda(i) = device {
                        tch::Cuda::synchronize(i as i64);
                    }
                })
            }
            None => Ok(()),
        }
    }

    fn step_inner(&mut self, input: &Tensor, y: &Tensor, what: StepInput) -> anyhow::Result<()> {
        let stepper = Stepper {
            model: self.fx.model,
            cfg: self.fx.cfg,
            setup: &self.fx.setup,
        };
        let l = stepper.forward_backward(&self.opt, self.scaler.as_ref(), input, y, what)?;
        self.images += y.size()[0] as usize;
        let outcome = self.opt.step(self.scaler.as_mut())?;
        if let Some(s) = self.scaler.as_ref() {
            if s.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                bail!(
                    "epoch {}: {MAX_CONSECUTIVE_SKIPS} fp16 steps in a row had non-finite \
                     gradients (loss scale now {}); the run stops",
                    self.epoch,
                    s.scale()
                );
            }
        }
        if !outcome.skipped {
            let _ = self.loss_sum.f_add_(&l.to_kind(Kind::Double));
            self.loss_steps += 1;
            if self.scaler.is_none() && self.loss_steps % LOSS_CHECK_EVERY == 0 {
                self.check_loss()?;
            }
        }
        Ok(())
    }

    /// The epoch's summed loss so far, read from the device; fp32 and bf16 runs stop when it
    /// is not finite (fp16 skips such steps instead).
    fn check_loss(&self) -> anyhow::Result<f64> {
        let sum = self.loss_sum.double_value(&[]);
        self.bar
            .set_message(format!("{:.4}", sum / self.loss_steps.max(1) as f64));
        if !sum.is_finite() && self.scaler.is_none() {
            bail!(
                "epoch {}, by step {}: the loss is {sum} ({:?}); the run stops (metrics.csv \
                 keeps every finished epoch)",
                self.epoch,
                self.loss_steps,
                self.fx.cfg.precision
            );
        }
        Ok(sum)
    }

    /// Counts the batch; a pending signal saves a checkpoint here and stops the run.
    fn after_batch(&mut self) -> anyhow::Result<()> {
        self.next_batch += 1;
        self.bar.inc(1);
        match interrupt::requested() {
            Some(sig) => {
                self.save()?;
                Err(self.interrupted(sig))
            }
            None => Ok(()),
        }
    }

    fn interrupted(&self, signal: i32) -> anyhow::Error {
        anyhow::Error::new(Interrupted {
            signal,
            resume_at: format!(
                "epoch {}, batch {} ({})",
                self.epoch,
                self.next_batch,
                self.fx.dir.display()
            ),
        })
    }

    /// The evaluations `epoch` needs: the validation split (best-val), the test set when the
    /// selection rule or the curve (`test_every`) asks for it.
    pub fn evaluate(
        &mut self,
        epoch: usize,
    ) -> anyhow::Result<(Option<Evaluation>, Option<Evaluation>)> {
        let cfg = self.fx.cfg;
        let val = match &self.fx.splits.val {
            Some(v) => Some(self.fx.evaluate_all(v)?.0),
            None => None,
        };
        let last = epoch + 1 == cfg.epochs;
        let test_now = match cfg.selection {
            Selection::BestTest => true,
            Selection::Last => last,
            Selection::BestVal => false,
        } || (cfg.test_every > 0 && (epoch + 1).is_multiple_of(cfg.test_every));
        let test = if test_now { Some(self.test()?) } else { None };
        Ok((val, test))
    }

    /// Evaluates the test set (and counts it).
    fn test(&mut self) -> anyhow::Result<Evaluation> {
        let (e, n) = self.fx.evaluate_all(&self.fx.splits.test)?;
        self.tests.evaluations += 1;
        self.tests.images += n;
        Ok(e)
    }

    /// Keeps `epoch`'s tensors when its selection score is the best so far (the first epoch
    /// always counts; later ones only when strictly better; NaN never).
    pub fn select(&mut self, epoch: usize, val: Option<&Evaluation>, test: Option<&Evaluation>) {
        let segmentation = self.fx.model.segmentation;
        let score = match self.fx.cfg.selection {
            Selection::BestVal => val.map(|v| v.primary(segmentation)),
            Selection::BestTest => test.map(|t| t.primary(segmentation)),
            Selection::Last => None,
        };
        let Some(s) = score else { return };
        if self
            .best
            .as_ref()
            .is_none_or(|b| s > b.score || b.score.is_nan())
        {
            self.best = Some(Best {
                score: s,
                epoch,
                snapshot: self.fx.model.snapshot(),
                test: test.cloned(),
            });
        }
    }

    /// The learning-rate factor of `epoch` (the schedule's).
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        self.opt.factor(epoch, self.fx.cfg.epochs)
    }

    /// The learning rate of each role with trainable tensors, as the last epoch trained.
    pub fn lrs(&self) -> Vec<(&'static str, f64)> {
        let counts = self.fx.model.groups().counts();
        super::log::ROLES
            .iter()
            .zip(self.opt.role_lrs())
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|((r, lr), _)| (*r, lr))
            .collect()
    }

    /// Training images this process saw in the epoch in progress.
    pub fn images(&self) -> usize {
        self.images
    }

    /// fp16: steps skipped so far.
    pub fn skipped_steps(&self) -> usize {
        self.scaler.as_ref().map_or(0, |s| s.skipped)
    }

    /// Moves on to the next epoch (remembering its test evaluation, if any).
    pub fn end_epoch(&mut self, test: Option<Evaluation>) {
        if test.is_some() {
            self.last_test = test;
        }
        self.epoch += 1;
        self.next_batch = 0;
        self.loss_sum = self.loss_sum.zeros_like();
        self.loss_steps = 0;
        self.images = 0;
    }

    /// The selected epoch: its tensors restored into the model, its test metrics (the test
    /// set evaluated now if the selection has not tested that epoch yet).
    pub fn finish(mut self, log: &mut RunLog) -> anyhow::Result<Fitted> {
        let cfg = self.fx.cfg;
        let (selected_epoch, test) = match (cfg.selection, self.best.take()) {
            // No training (a warm start evaluated as it is).
            _ if cfg.epochs == 0 => {
                log.say("epochs = 0: the init_from tensors evaluated as they are");
                (0, self.test()?)
            }
            (Selection::Last, _) => (
                cfg.epochs - 1,
                self.last_test
                    .take()
                    .context("the last epoch evaluates the test set")?,
            ),
            (Selection::BestTest, Some(b)) => {
                self.fx.model.restore(&b.snapshot);
                (
                    b.epoch,
                    b.test
                        .context("best-test evaluates the test set each epoch")?,
                )
            }
            (Selection::BestVal, Some(b)) => {
                self.fx.model.restore(&b.snapshot);
                // Tested that epoch already (test_every) or now, once.
                let test = match b.test {
                    Some(t) => t,
                    None => self.test()?,
                };
                (b.epoch, test)
            }
            (_, None) => bail!("no epoch produced a selection score"),
        };
        let segmentation = self.fx.model.segmentation;
        let TestCount {
            evaluations: test_evaluations,
            images: test_images,
        } = self.tests;
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
            skipped_steps: self.skipped_steps(),
            test_evaluations,
            test_images,
        })
    }
}
