//! BraTS (2020/2021, and 2023 naming): one folder per case,
//! `BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz`
//! (2021: `BraTS2021_00000_*.nii.gz`; 2023: `BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz`),
//! `.nii` or `.nii.gz`. Case folders are found up to three levels below the root (so the root
//! may be the folder holding `MICCAI_BraTS2020_TrainingData`). A seg file whose name does not
//! follow the pattern but contains `seg` (BraTS 2020 case 355) is accepted.
//!
//! Samples are 2D axial slices; splits are by case. Labels: 0, 1 (necrosis/non-enhancing),
//! 2 (oedema), 4 (enhancing; 3 in 2023+), mapped by [`LabelMap`].

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_set::skip_or_fail;
use crate::options::{LabelMap, LoaderOptions, Modality};
use crate::sample::{Skipped, Task};
use crate::slices::{Case, LabelSource, SliceDataset};

/// Maps a voxel's label value to a class (`None`: not a label of this dataset).
pub type LabelFn = fn(f32) -> Option<u8>;

/// Whole tumour: {1, 2, 3, 4} -> 1.
pub fn whole_tumour(v: f32) -> Option<u8> {
    match v.round() as i64 {
        0 => Some(0),
        1..=4 => Some(1),
        _ => None,
    }
}

/// Regions: 0, 1, 2, 4 -> 0, 1, 2, 3 (3, the 2023+ enhancing label, -> 3).
pub fn regions(v: f32) -> Option<u8> {
    match v.round() as i64 {
        0 => Some(0),
        1 => Some(1),
        2 => Some(2),
        3 | 4 => Some(3),
        _ => None,
    }
}

fn is_nifti(name: &str) -> Option<&str> {
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
}

/// Folders (sorted) that hold NIfTI files, up to `depth` levels below `dir`.
fn case_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut subs = Vec::new();
    let mut has_nifti = false;
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if e.path().is_dir() {
            subs.push(e.path());
        } else if is_nifti(&name).is_some() {
            has_nifti = true;
        }
    }
    if has_nifti {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if depth > 0 {
        subs.sort();
        for s in subs {
            case_dirs(&s, depth - 1, out)?;
        }
    }
    Ok(())
}

/// Builds one case from its folder.
fn case_of(dir: &Path, modalities: &[Modality], map: fn(f32) -> Option<u8>) -> Result<Case> {
    let id = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = is_nifti(&name) {
            files.push((stem.to_string(), e.path()));
        }
    }
    files.sort();
    let suffix = |stem: &str| {
        stem.rsplit(['_', '-'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let seg = files
        .iter()
        .find(|(s, _)| suffix(s) == "seg")
        .or_else(|| {
            files
                .iter()
                .find(|(s, _)| s.to_ascii_lowercase().contains("seg"))
        })
        .map(|(_, p)| p.clone())
        .ok_or_else(|| DataError::MissingMask {
            image: dir.to_path_buf(),
            expected: dir.join(format!("{id}_seg.nii.gz")),
        })?;
    let mut channels = Vec::new();
    for m in modalities {
        let p = files
            .iter()
            .find(|(s, _)| m.suffixes().contains(&suffix(s).as_str()))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| DataError::MissingFile {
                path: dir.join(format!("{id}_{}.nii.gz", m.suffixes()[0])),
                what: format!("the {:?} volume of this case", m),
            })?;
        channels.push(p);
    }
    Ok(Case {
        id,
        channels,
        labels: LabelSource::Volume { path: seg, map },
    })
}

/// Scans a BraTS training folder.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<SliceDataset> {
    let v = &opts.volume;
    if v.modalities.len() != 1 && v.modalities.len() != 3 {
        return Err(DataError::config(format!(
            "BraTS needs one modality (replicated to RGB) or three (stacked), got {}",
            v.modalities.len()
        )));
    }
    let (map, classes): (LabelFn, Vec<&str>) = match v.labels {
        LabelMap::WholeTumour => (whole_tumour, vec!["background", "whole tumour"]),
        LabelMap::Regions => (
            regions,
            vec![
                "background",
                "necrosis / non-enhancing",
                "oedema",
                "enhancing",
            ],
        ),
    };
    let mut dirs = Vec::new();
    case_dirs(root, 3, &mut dirs)?;
    if dirs.is_empty() {
        return Err(DataError::layout(
            root,
            "no BraTS case folder (a folder of .nii/.nii.gz files) found",
        ));
    }
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut cases = Vec::new();
    for d in dirs {
        match case_of(&d, &v.modalities, map) {
            Ok(c) => cases.push(c),
            Err(e) => skip_or_fail(opts, &mut skipped, e)?,
        }
    }
    let task = Task::Segmentation {
        classes: classes.into_iter().map(str::to_string).collect(),
    };
    SliceDataset::build("brats", root, task, cases, skipped, true, opts)
}
