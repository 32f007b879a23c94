//! Real brain MRI from the package registries (fetched by `scripts/assets.sh` into
//! `.assets/`), as slice-wise segmentation datasets through the same NIfTI path as BraTS:
//!
//! - `mni152` (root `.assets/mni152`): the MNI152 2009a T1 template from the nilearn wheel,
//!   197x233x189 uint8, RAS; classes 0 background, 1 grey matter, 2 white matter, each voxel
//!   the argmax of (1 - gm - wm, gm, wm) over the grey/white-matter probability maps.
//! - `colin27` (root `.assets/colin27`): the Colin27 T1 (`ch2.nii.gz`) from Debian's
//!   mricron-data with the AAL atlas (116 regions) as labels; class names from `aal.nii.txt`.
//! - `colin27-gm-slab` (same root): Colin27's brain-extracted T1 (`ch2bet.nii.gz`) labelled
//!   background / grey matter, grey matter being the union of the AAL atlas's 116 regions
//!   (cortical and deep grey matter, cerebellum), with the same held-out test slab as
//!   `mni152-slab`.
//!
//! Both are one subject, so each slice is its own split group.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::options::LoaderOptions;
use crate::sample::{SplitName, Task};
use crate::slices::{Case, LabelSource, SliceDataset};

pub const MNI_T1: &str = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz";
pub const MNI_GM: &str = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz";
pub const MNI_WM: &str = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz";

fn require(root: &Path, name: &str) -> Result<PathBuf> {
    let p = root.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(DataError::MissingFile {
            path: p,
            what: "a registry asset; run scripts/assets.sh to fetch it".into(),
        })
    }
}

/// The MNI152 template with grey/white-matter labels.
pub fn open_mni152(root: &Path, opts: &LoaderOptions) -> Result<SliceDataset> {
    let case = Case {
        id: "mni152".into(),
        channels: vec![require(root, MNI_T1)?],
        labels: LabelSource::Tissue {
            maps: vec![require(root, MNI_GM)?, require(root, MNI_WM)?],
        },
    };
    let task = Task::Segmentation {
        classes: vec![
            "background".into(),
            "grey matter".into(),
            "white matter".into(),
        ],
    };
    SliceDataset::build("mni152", root, task, vec![case], Vec::new(), false, opts)
}

/// `mni152-slab`: the MNI152 template's grey/white-matter slices with a held-out test slab
/// far from every training slice (one subject has no second subject to test on): over the
/// axial range of the kept slices, the test set is the slab from 55 % to 75 % of the range,
/// the slices within 8 % of the range on either side of it are dropped (no training slice is
/// a neighbour of a test slice), and all other slices form the training pool.
pub fn open_mni152_slab(root: &Path, opts: &LoaderOptions) -> Result<SliceDataset> {
    Ok(open_mni152(root, opts)?
        .renamed("mni152-slab")
        .with_slabs(held_out_slab))
}

/// The split of axial slice `z` of the kept range `lo..=hi`: the test slab from 55 % to 75 %
/// of the range, nothing within 8 % of the range on either side of it, training elsewhere.
fn held_out_slab(z: usize, lo: usize, hi: usize) -> Option<SplitName> {
    let r = (hi - lo).max(1) as f64;
    let t = (z - lo) as f64 / r;
    if (0.55..0.75).contains(&t) {
        Some(SplitName::Test)
    } else if (0.47..0.83).contains(&t) {
        None
    } else {
        Some(SplitName::Train)
    }
}

fn atlas_label(v: f32) -> Option<u8> {
    let r = v.round();
    (0.0..=255.0).contains(&r).then_some(r as u8)
}

/// Any AAL region is grey matter (1); outside the atlas is background (0).
fn atlas_grey_matter(v: f32) -> Option<u8> {
    atlas_label(v).map(|l| u8::from(l > 0))
}

/// `colin27-gm-slab`: Colin27's brain-extracted T1 with grey matter (the union of the AAL
/// regions) as the one foreground class, and the held-out slab split of `mni152-slab`.
pub fn open_colin27_gm_slab(root: &Path, opts: &LoaderOptions) -> Result<SliceDataset> {
    let case = Case {
        id: "colin27".into(),
        channels: vec![require(root, "ch2bet.nii.gz")?],
        labels: LabelSource::Volume {
            path: require(root, "aal.nii.gz")?,
            map: atlas_grey_matter,
        },
    };
    let task = Task::Segmentation {
        classes: vec!["background".into(), "grey matter".into()],
    };
    Ok(SliceDataset::build(
        "colin27-gm-slab",
        root,
        task,
        vec![case],
        Vec::new(),
        false,
        opts,
    )?
    .with_slabs(held_out_slab))
}

/// Colin27 with the AAL atlas.
pub fn open_colin27(root: &Path, opts: &LoaderOptions) -> Result<SliceDataset> {
    let names_path = require(root, "aal.nii.txt")?;
    let text = std::fs::read_to_string(&names_path).map_err(|e| DataError::io(&names_path, e))?;
    let mut classes = vec!["background".to_string()];
    for (i, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(idx), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let idx: usize = idx.parse().map_err(|_| DataError::CsvRow {
            path: names_path.clone(),
            line: i as u64 + 1,
            problem: format!("`{idx}` is not a label index"),
        })?;
        // Label maps are 8-bit: an index above 255 cannot occur in the atlas volume.
        if idx > 255 {
            return Err(DataError::CsvRow {
                path: names_path.clone(),
                line: i as u64 + 1,
                problem: format!("label index {idx} is above 255 (labels are 8-bit)"),
            });
        }
        if classes.len() <= idx {
            classes.resize(idx + 1, String::new());
        }
        classes[idx] = name.to_string();
    }
    let case = Case {
        id: "colin27".into(),
        channels: vec![require(root, "ch2.nii.gz")?],
        labels: LabelSource::Volume {
            path: require(root, "aal.nii.gz")?,
            map: atlas_label,
        },
    };
    SliceDataset::build(
        "colin27",
        root,
        Task::Segmentation { classes },
        vec![case],
        Vec::new(),
        false,
        opts,
    )
}
