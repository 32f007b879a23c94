//! Options every loader accepts (one struct, so the CLI can fill it once).

use serde::{Deserialize, Serialize};

/// How thoroughly a scan checks files before training starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckLevel {
    /// Read image headers only (size, format): fast, catches unreadable and mismatched files.
    #[default]
    Header,
    /// Decode every image and mask fully (catches truncated bodies too), in parallel.
    Decode,
}

/// BraTS modality (2023+ names `t1n`, `t1c`, `t2w`, `t2f` are accepted as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Flair,
    T1,
    T1ce,
    T2,
}

impl Modality {
    /// File-name suffixes for this modality, old naming first.
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            Modality::Flair => &["flair", "t2f"],
            Modality::T1 => &["t1", "t1n"],
            Modality::T1ce => &["t1ce", "t1c"],
            Modality::T2 => &["t2", "t2w"],
        }
    }

    /// Parses `flair`, `t1`, `t1ce`, `t2` (or the 2023 aliases).
    pub fn parse(s: &str) -> Option<Modality> {
        let s = s.to_ascii_lowercase();
        [Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2]
            .into_iter()
            .find(|m| m.suffixes().contains(&s.as_str()))
    }
}

/// How BraTS labels become classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMap {
    /// Binary: {1, 2, 3, 4} -> 1 (whole tumour).
    #[default]
    WholeTumour,
    /// 0, 1, 2, 4 -> 0, 1, 2, 3 (label 3 of BraTS 2023+ is enhancing too, -> 3).
    Regions,
}

/// Which axial slices of a volume become samples.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "fraction")]
pub enum EmptySlices {
    /// Every slice.
    KeepAll,
    /// Only slices whose label map has foreground.
    #[default]
    Drop,
    /// Slices with foreground plus this seeded fraction (0..=1) of the empty ones.
    KeepFraction(f64),
}

/// Options for volume datasets (BraTS, MNI152, Colin27).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    /// One modality (replicated to RGB) or three (stacked as RGB).
    pub modalities: Vec<Modality>,
    pub labels: LabelMap,
    pub empty_slices: EmptySlices,
    /// Per-volume intensity clip, in percent of the non-zero voxels.
    pub percentiles: (f64, f64),
    /// Decoded cases kept in memory (slices of one case share a decode).
    pub cache_volumes: usize,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            modalities: vec![Modality::Flair],
            labels: LabelMap::WholeTumour,
            empty_slices: EmptySlices::Drop,
            percentiles: (0.5, 99.5),
            cache_volumes: 8,
        }
    }
}

/// Column names for the generic CSV loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    pub image_column: String,
    /// Class name column (classification).
    pub label_column: String,
    /// Mask path column (segmentation); used when the header has it and no label column.
    pub mask_column: String,
    /// Optional column with `train` / `val` / `test`.
    pub split_column: String,
    /// Optional column grouping rows that a split must keep together (e.g. a patient id).
    pub group_column: String,
    /// Masks are binary (any non-zero pixel is foreground) rather than class indices.
    pub binary_masks: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            image_column: "image".into(),
            label_column: "label".into(),
            mask_column: "mask".into(),
            split_column: "split".into(),
            group_column: "group".into(),
            binary_masks: true,
        }
    }
}

/// Everything `open_dataset` needs besides the name and the root.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderOptions {
    /// Skip (and count) bad files instead of failing on the first one.
    pub skip_bad: bool,
    pub check: CheckLevel,
    pub volume: VolumeOptions,
    pub csv: CsvOptions,
    /// Threads for scanning and hashing (0: rayon's global pool).
    pub threads: usize,
    /// ISIC-2019: keep the images of one lesion (`lesion_id` in the metadata CSV) in one
    /// split. Off by default: the paper's per-class counts are in images.
    pub group_by_lesion: bool,
}
