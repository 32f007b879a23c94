//! What stays fixed while a run trains: the configuration, the model, the evaluation set-up,
//! the splits and the training split's cached features or stem.
use crate::config::run::RunConfig;
use crate::train::data::eval_loader;
use crate::train::evaluate::{evaluate, EvalSetup, Evaluation};
use crate::train::feature_cache::{step_input, FeatureCache, STEM_CACHE_BYTES};
use crate::train::fit::Splits;
use crate::train::log::RunLog;
use crate::train::model::Model;
use crate::train::step::StepInput;
use dka_data::DecodedSplit;
use std::path::Path;
use std::sync::Arc;
use tch::Device;

/// What stays fixed while a run trains.
pub struct Fixed<'a> {
    pub(super) cfg: &'a RunConfig,
    pub(super) model: &'a Model,
    pub(super) setup: EvalSetup,
    pub(super) augment: Option<dka_data::Augment>,
    pub(super) splits: Splits,
    /// Linear probing: the frozen backbone's features of the training split; other methods
    /// without augmentation: the frozen stem's output, where the backbone has one.
    pub(super) cache: Option<FeatureCache>,
    pub(super) dir: &'a Path,
    /// Take a saved state made for fewer epochs on to `cfg.epochs` (`--continue`).
    pub(super) continuing: bool,
}

impl<'a> Fixed<'a> {
    pub fn new(
        cfg: &'a RunConfig,
        model: &'a Model,
        classes: i64,
        splits: Splits,
        dir: &'a Path,
        device: Device,
        log: &mut RunLog,
        continuing: bool,
    ) -> anyhow::Result<Self> {
        let setup = EvalSetup::new(cfg, classes, device)?;
        let method = cfg.method.method();
        let what = step_input(cfg, model);
        let cache = match what {
            StepInput::Images => None,
            _ => FeatureCache::build(
                model,
                what,
                &splits.train,
                setup.pad,
                cfg,
                &setup.normalizer,
                setup.amp,
                device,
                (what == StepInput::Stem).then_some(STEM_CACHE_BYTES),
            )?,
        };
        match (&cache, what) {
            (Some(c), StepInput::Features) => log.note(&format!(
                "{}: frozen features of {} training samples cached once ({:?}, host memory)",
                method.name(),
                c.len(),
                c.kind()
            )),
            (Some(c), StepInput::Stem) => log.note(&format!(
                "the backbone's frozen stem (no trained weight, no augmentation) computed once for \
                 {} training samples ({:?}, host memory); the steps start after it",
                c.len(),
                c.kind()
            )),
            (None, StepInput::Stem) => log.note(&format!(
                "the backbone's frozen stem is not cached: its output for the training split \
                 would take more than {} GiB; it runs at every step",
                STEM_CACHE_BYTES >> 30
            )),
            _ => {}
        }
        Ok(Self {
            cfg,
            model,
            setup,
            augment: cfg.augment.then(dka_data::Augment::default),
            splits,
            cache,
            dir,
            continuing,
        })
    }

    /// Batches in one training epoch.
    pub(super) fn batches(&self) -> usize {
        let n = match &self.cache {
            Some(c) => c.len(),
            None => self.splits.train.len(),
        };
        n.div_ceil(self.cfg.batch_size.max(1))
    }

    /// Metrics of the model on all of `split`, and the images seen.
    pub(super) fn evaluate_all(
        &self,
        split: &Arc<DecodedSplit>,
    ) -> anyhow::Result<(Evaluation, usize)> {
        let all = (0..split.len()).collect();
        evaluate(
            self.model,
            eval_loader(split, all, self.cfg)?,
            split,
            &self.setup,
        )
    }
}
