//! A run's checkpoint: resuming from it, and writing it after an epoch or on a signal.
use super::{Best, TestCount, TrainState};
use crate::config::run::Selection;
use crate::train::checkpoint;
use crate::train::evaluate::Evaluation;
use crate::train::log::{MetricsLog, RunLog};
use crate::train::model::Snapshot;
use crate::train::precision::LossScaler;
use crate::util::interrupt;
use std::time::Instant;
use tch::Tensor;

impl TrainState<'_> {
    /// Continues from the run's checkpoint, if it has one of these settings, and opens
    /// `metrics.csv` (its finished epochs kept on a resume).
    pub fn resume(&mut self, log: &mut RunLog) -> anyhow::Result<MetricsLog> {
        let path = self.fx.dir.join("metrics.csv");
        let segmentation = self.fx.model.segmentation;
        let wanted = checkpoint::Wanted {
            config_sha256: &self.config_sha,
            precision: self.fx.cfg.precision,
            epochs: self.fx.cfg.epochs,
            continuing: self.fx.continuing,
        };
        let Some(ck) = checkpoint::load(self.fx.dir, wanted)? else {
            anyhow::ensure!(
                !self.fx.continuing,
                "{}: no saved state of these settings to continue (a run keeps its final state \
                 unless it is large; then only with --keep-state)",
                self.fx.dir.display()
            );
            return MetricsLog::create(&path, segmentation);
        };
        let st = &ck.state;
        self.fx
            .model
            .restore(&Snapshot::from_tensors(ck.part("model")));
        self.opt.load_state(&ck.part("optim"))?;
        if let (Some(s), Some(saved)) = (self.scaler.as_mut(), st.scaler) {
            s.restore(saved);
        }
        self.best = st.best.as_ref().map(|(score, epoch, test)| Best {
            score: *score,
            epoch: *epoch,
            snapshot: Snapshot::from_tensors(ck.part("best")),
            test: test.clone().map(Evaluation::from_values),
        });
        self.last_test = st.last_test.clone().map(Evaluation::from_values);
        self.tests = TestCount {
            evaluations: st.test_evaluations,
            images: st.test_images,
        };
        (self.epoch, self.next_batch) = (st.epoch, st.next_batch);
        self.loss_sum = Tensor::from(st.loss_sum).to_device(self.fx.setup.device);
        self.loss_steps = st.loss_steps;
        self.seconds_before = st.seconds;
        let made_for = st.epochs.unwrap_or(self.fx.cfg.epochs);
        if made_for != self.fx.cfg.epochs {
            log.say(&format!(
                "continuing a {made_for}-epoch run from the end of epoch {} to {} epochs",
                self.epoch, self.fx.cfg.epochs
            ));
        } else {
            log.say(&format!(
                "resumed from the checkpoint at epoch {}, batch {}",
                self.epoch + 1,
                self.next_batch
            ));
        }
        MetricsLog::resume(&path, segmentation, self.epoch)
    }

    /// After an epoch: a checkpoint when the last one is old enough (10 s, or a minute for
    /// large states, so a SIGKILL loses at most that much work, or the epoch in flight when
    /// epochs are longer), after the last epoch and when a signal asks the run to stop; then
    /// stops on that signal.
    pub fn checkpoint_or_stop(&mut self) -> anyhow::Result<()> {
        let cfg = self.fx.cfg;
        let signal = interrupt::requested();
        let copies = if self.best.is_some() || cfg.selection != Selection::Last {
            4
        } else {
            3
        };
        let state_bytes: i64 = self.fx.model.groups().counts().iter().sum::<i64>() * 4 * copies;
        let every = if state_bytes < (256 << 20) { 10 } else { 60 };
        if signal.is_some()
            || self.last_saved.elapsed().as_secs() >= every
            || self.epoch == cfg.epochs
        {
            self.save()?;
            self.last_saved = Instant::now();
        }
        match signal {
            Some(sig) => Err(self.interrupted(sig)),
            None => Ok(()),
        }
    }

    /// Writes the run's checkpoint at its current position.
    pub(super) fn save(&self) -> anyhow::Result<()> {
        let state = checkpoint::State {
            config_sha256: self.config_sha.clone(),
            epoch: self.epoch,
            next_batch: self.next_batch,
            loss_sum: self.loss_sum.double_value(&[]),
            loss_steps: self.loss_steps,
            scaler: self.scaler.as_ref().map(LossScaler::state),
            best: self
                .best
                .as_ref()
                .map(|b| (b.score, b.epoch, b.test.as_ref().map(Evaluation::values))),
            last_test: self.last_test.as_ref().map(Evaluation::values),
            test_evaluations: self.tests.evaluations,
            test_images: self.tests.images,
            seconds: self.seconds_before + self.started.elapsed().as_secs_f64(),
            precision: Some(self.fx.cfg.precision),
            epochs: Some(self.fx.cfg.epochs),
        };
        let mut tensors: Vec<(String, Tensor)> = self
            .fx
            .model
            .snapshot()
            .tensors()
            .map(|(n, t)| (format!("model/{n}"), t.shallow_clone()))
            .collect();
        tensors.extend(
            self.opt
                .state()
                .into_iter()
                .map(|(n, t)| (format!("optim/{n}"), t)),
        );
        if let Some(b) = &self.best {
            tensors.extend(
                b.snapshot
                    .tensors()
                    .map(|(n, t)| (format!("best/{n}"), t.shallow_clone())),
            );
        }
        checkpoint::save(self.fx.dir, &state, &tensors)
    }
}
