//! ISIC-2018 Task 1 (binary lesion segmentation):
//! `ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_*.jpg` with
//! `ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_*_segmentation.png` (0/255).
//! Training is required; Validation and Test, when unpacked, are the official val and test
//! splits. Non-JPEG files in the input folders (LICENSE, ATTRIBUTION) are ignored.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{ImageDataset, ImageEntry};
use crate::options::LoaderOptions;
use crate::sample::{SplitName, Task};

const PARTS: [(&str, SplitName); 3] = [
    ("Training", SplitName::Train),
    ("Validation", SplitName::Val),
    ("Test", SplitName::Test),
];

/// Sorted `.jpg` files of a folder (names only).
pub(crate) fn list_files(dir: &Path, exts: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if entry.path().is_file() && exts.iter().any(|x| lower.ends_with(x)) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Scans an ISIC-2018 Task 1 release folder.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<ImageDataset> {
    let mut entries = Vec::new();
    for (part, split) in PARTS {
        let input = PathBuf::from(format!("ISIC2018_Task1-2_{part}_Input"));
        let gt = PathBuf::from(format!("ISIC2018_Task1_{part}_GroundTruth"));
        if !root.join(&input).is_dir() {
            if split == SplitName::Train {
                return Err(DataError::MissingFile {
                    path: root.join(input),
                    what: "the ISIC-2018 training input folder".into(),
                });
            }
            continue;
        }
        if !root.join(&gt).is_dir() {
            return Err(DataError::MissingFile {
                path: root.join(gt),
                what: format!("the ground-truth folder for the {part} images"),
            });
        }
        for name in list_files(&root.join(&input), &[".jpg", ".jpeg"])? {
            let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
            let mut e = ImageEntry::new(input.join(&name));
            e.masks = vec![gt.join(format!("{stem}_segmentation.png"))];
            e.official = Some(split);
            entries.push(e);
        }
    }
    let task = Task::Segmentation {
        classes: vec!["background".into(), "lesion".into()],
    };
    ImageDataset::build(
        "isic2018",
        root,
        task,
        entries,
        Vec::new(),
        MaskValues::Binary,
        opts,
    )
}
