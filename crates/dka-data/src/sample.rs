//! The types every loader shares: tasks, splits, records, decoded and preprocessed samples.

use std::path::PathBuf;

use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3};
use serde::{Deserialize, Serialize};

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
