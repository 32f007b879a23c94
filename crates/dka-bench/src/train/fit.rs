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
//! was reported. The state a run carries from step to step, and its named steps, are in
//! [`super::state`]; this file is the loop over them.
use super::data::RunData;
use super::log::{EpochRow, RunLog};
use super::model::Model;
use super::state::{Fixed, TrainState};
use crate::config::run::{RunConfig, Selection};
use dka_data::{CacheOutcome, DecodedSplit, Preprocess, SplitName};
use std::path::Path;
use std::sync::Arc;
use tch::Device;

/// What fitting produced.
pub struct Fitted {
    pub selected_epoch: usize,
    /// Test metrics of the selected epoch.
    pub test: super::evaluate::Evaluation,
    pub skipped_steps: usize,
    /// How many times the test set was evaluated, and the images that took.
    pub test_evaluations: usize,
    pub test_images: usize,
}

/// The decoded splits a run reads.
pub struct Splits {
    pub train: Arc<DecodedSplit>,
    pub test: Arc<DecodedSplit>,
    /// Only for `best-val` selection.
    pub val: Option<Arc<DecodedSplit>>,
    /// What opening them did (for the run's log).
    pub notes: Vec<String>,
}

/// Every split the run reads, decoded once per machine (u8, memory-mapped) at the run's
/// geometry: opened before the run writes anything, so a bad image fails it cleanly.
pub fn open_splits(cfg: &RunConfig, data: &RunData) -> anyhow::Result<Splits> {
    let spec = cfg.input_spec()?;
    let pre: Preprocess = super::data::preprocess(cfg, &spec);
    let mut notes = Vec::new();
    let mut decode = |which: SplitName| -> anyhow::Result<Arc<DecodedSplit>> {
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

/// Trains `model` on the training split for `cfg.epochs` (resuming the run's checkpoint if it
/// has one; `continuing`, one made for fewer epochs too) and leaves it holding the selected
/// epoch's tensors.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    cfg: &RunConfig,
    model: &Model,
    data: &RunData,
    splits: Splits,
    log: &mut RunLog,
    dir: &Path,
    device: Device,
    continuing: bool,
) -> anyhow::Result<Fitted> {
    let classes = data.ds.task().classes().len() as i64;
    let fixed = Fixed::new(cfg, model, classes, splits, dir, device, log, continuing)?;
    let mut st = TrainState::new(fixed, log)?;
    let mut csv = st.resume(log)?;
    // Under autocast, frozen Linear weights are cast once for the run, not at every step (the
    // same values: dka_core::reduced). Opened after the weights are loaded.
    let amp = crate::train::precision::Amp::new(cfg.precision, device);
    let _casts =
        (amp.kind() != tch::Kind::Float).then(|| dka_core::reduced::FrozenCasts::keep(amp.kind()));
    while st.epoch() < cfg.epochs {
        let epoch = st.epoch();
        let started = std::time::Instant::now();
        let train_loss = st.train_epoch()?;
        let (val, test) = st.evaluate(epoch)?;
        st.select(epoch, val.as_ref(), test.as_ref());
        let row = EpochRow {
            epoch,
            epochs: cfg.epochs,
            train_loss,
            lr_factor: st.lr_factor(epoch),
            lrs: st.lrs(),
            skipped_steps: st.skipped_steps(),
            seconds: started.elapsed().as_secs_f64(),
            images: st.images(),
            val: val.as_ref(),
            test: test.as_ref(),
        };
        csv.append(&row)?;
        log.epoch(&row, model.segmentation)?;
        st.end_epoch(test);
        st.checkpoint_or_stop()?;
    }
    st.finish(log)
}
