//! The `Dataset` trait and the types every loader shares.

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3};
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::error::Result;
use crate::preprocess::{finish, prepare_u8, Preprocess, U8Sample};
use crate::rng::Rng;

/// What the labels are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// One class per image; `classes[i]` names class index `i`.
    Classification { classes: Vec<String> },
    /// A class per pixel; `classes[0]` is the background.
    Segmentation { classes: Vec<String> },
}

impl Task {
    /// Class names, in index order.
    pub fn classes(&self) -> &[String] {
        match self {
            Task::Classification { classes } | Task::Segmentation { classes } => classes,
        }
    }

    pub fn is_segmentation(&self) -> bool {
        matches!(self, Task::Segmentation { .. })
    }
}

/// A split that the release itself defines (e.g. ISIC-2018's Validation and Test folders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Val,
    Test,
}

impl SplitName {
    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Val, SplitName::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
            SplitName::Test => "test",
        }
    }
}

/// One sample as the scan found it: nothing decoded yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unique within the dataset (a relative path, or `case/z=077` for a slice).
    pub id: String,
    /// Every file this sample is read from, relative to the dataset root (hashed in manifests).
    pub files: Vec<PathBuf>,
    /// The class index for classification; `None` for segmentation.
    pub class: Option<usize>,
    /// Stratum used for stratified splits (the class for classification).
    pub stratum: usize,
    /// The unit a split never cuts through (a patient, a lesion, a BraTS case).
    pub group: String,
    /// The split the release puts this sample in, if it defines one.
    pub official: Option<SplitName>,
}

/// A file that `skip_bad` left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// A decoded sample at its native resolution (or a reduced JPEG scale, see
/// [`Dataset::read_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    /// 8-bit RGB (grey inputs replicated, 16-bit inputs scaled, volumes normalised per case).
    pub image: RgbImage,
    /// Class map for segmentation, same size as `image`.
    pub mask: Option<GrayImage>,
    /// Class index for classification.
    pub class: Option<usize>,
}

/// What a prepared sample is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Class(usize),
    /// (H, W) class map.
    Mask(Array2<u8>),
}

/// A preprocessed sample: (3, H, W) normalised image and its target.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: Array3<f32>,
    pub target: Target,
}

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
