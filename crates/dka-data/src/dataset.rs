//! The `Dataset` trait: one release (or a user's folder) scanned into records, read and
//! preprocessed sample by sample.

use std::path::Path;

use crate::augment::Augment;
use crate::error::Result;
use crate::preprocess::{finish, prepare_u8};
use crate::preset::{Preprocess, U8Sample};
use crate::rng::Rng;
use crate::sample::{RawSample, Record, Sample, Skipped, Task};

/// One release (or a user's folder) scanned into records. Loaders build one; the splitter,
/// the manifest writer and the batch loader only see this trait.
pub trait Dataset: Send + Sync + std::fmt::Debug {
    /// The name `open_dataset` knows it by (`isic2019`, `busi-seg`...).
    fn name(&self) -> &str;
    /// The folder the release was unpacked to; record files are relative to it.
    fn root(&self) -> &Path;
    fn task(&self) -> &Task;
    /// Records in a deterministic order (sorted by id).
    fn records(&self) -> &[Record];
    /// Names of the strata used by `Record::stratum` (class names for classification).
    fn strata(&self) -> Vec<String> {
        self.task().classes().to_vec()
    }
    /// Files that `skip_bad` left out at scan time.
    fn skipped(&self) -> &[Skipped];
    /// The case record `index` belongs to when several records are parts of one (the slices
    /// of a volume), for per-case scores; `None` when the record is a case of its own.
    fn case_of(&self, index: usize) -> Option<&str> {
        let _ = index;
        None
    }
    /// Decodes record `index` at native resolution.
    fn read(&self, index: usize) -> Result<RawSample>;

    /// Decodes record `index` for evaluation preprocessing by `pre`: loaders may decode at a
    /// reduced scale that still covers `pre`'s output ([`Preprocess::decode_scale`]; JPEG DCT
    /// scaling). The default decodes at native resolution.
    fn read_for(&self, index: usize, pre: &Preprocess) -> Result<RawSample> {
        let _ = pre;
        self.read(index)
    }

    /// Decodes several records at native resolution; volume datasets decode each volume once
    /// for all of its slices here (and do not touch their small LRU of cases).
    fn read_many(&self, indices: &[usize]) -> Vec<Result<RawSample>> {
        indices.iter().map(|&i| self.read(i)).collect()
    }

    /// Decodes, resizes (and, only when `augment` is given, augments) record `index`, in 8
    /// bits. Without augmentation the decode goes through [`Dataset::read_for`].
    fn sample_u8(
        &self,
        index: usize,
        pre: &Preprocess,
        augment: Option<(&Augment, &mut Rng)>,
    ) -> Result<U8Sample> {
        let raw = match augment {
            None => self.read_for(index, pre)?,
            Some(_) => self.read(index)?,
        };
        prepare_u8(raw, pre, augment)
    }

    /// Decodes, resizes and normalises record `index`; augments only when `augment` is given
    /// (training). Evaluation data must be read with `None`.
    fn sample(
        &self,
        index: usize,
        pre: &Preprocess,
        augment: Option<(&Augment, &mut Rng)>,
    ) -> Result<Sample> {
        Ok(finish(self.sample_u8(index, pre, augment)?, pre))
    }
}
