//! BUSI breast ultrasound: `Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png`
//! with `benign (1)_mask.png` and sometimes extra masks `benign (1)_mask_1.png` that are
//! OR-ed in. Names contain spaces and parentheses. The root may be the
//! `Dataset_BUSI_with_GT` folder or the folder holding it. Classification (`busi-cls`) uses
//! the images only; segmentation (`busi-seg`) requires each image's `_mask.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{skip_or_fail, ImageDataset, ImageEntry};
use crate::isic2018::list_files;
use crate::options::LoaderOptions;
use crate::sample::{Skipped, Task};

pub const CLASSES: [&str; 3] = ["benign", "malignant", "normal"];
const FOLDER: &str = "Dataset_BUSI_with_GT";

/// `Some(base)` when `stem` is a mask name: `base_mask` or `base_mask_N`.
fn mask_base(stem: &str) -> Option<&str> {
    if let Some(base) = stem.strip_suffix("_mask") {
        return Some(base);
    }
    let (head, n) = stem.rsplit_once('_')?;
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
        return head.strip_suffix("_mask");
    }
    None
}

/// The folder that holds the class folders.
pub(crate) fn resolve_root(root: &Path, inner: &str) -> PathBuf {
    let nested = root.join(inner);
    if nested.is_dir() {
        nested
    } else {
        root.to_path_buf()
    }
}

/// Scans BUSI for classification (`segmentation = false`) or segmentation.
pub fn open(root: &Path, segmentation: bool, opts: &LoaderOptions) -> Result<ImageDataset> {
    let base = resolve_root(root, FOLDER);
    let prefix = base
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut found = 0;
    let mut entries = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .map_err(|e| DataError::io(&base, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(class) = CLASSES.iter().position(|c| *c == name) else {
            let err = DataError::UnknownClassFolder {
                path: dir.clone(),
                expected: CLASSES.iter().map(|s| s.to_string()).collect(),
            };
            skip_or_fail(opts, &mut skipped, err)?;
            continue;
        };
        found += 1;
        let rel_dir = prefix.join(&name);
        // image stem -> extra masks (sorted by name)
        let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut masks: Vec<(String, String)> = Vec::new();
        for file in list_files(&dir, &[".png"])? {
            let stem = &file[..file.len() - 4];
            match mask_base(stem) {
                Some(b) => masks.push((b.to_string(), file.clone())),
                None => {
                    images.entry(stem.to_string()).or_default();
                }
            }
        }
        for (b, file) in masks {
            match images.get_mut(&b) {
                Some(list) => list.push(file),
                None => tracing::warn!("{}: mask without an image", dir.join(&file).display()),
            }
        }
        for (stem, mut mask_files) in images {
            let mut e = ImageEntry::new(rel_dir.join(format!("{stem}.png")));
            e.class = Some(class);
            if segmentation {
                let main = format!("{stem}_mask.png");
                if !mask_files.contains(&main) {
                    let err = DataError::MissingMask {
                        image: base.join(&name).join(format!("{stem}.png")),
                        expected: base.join(&name).join(&main),
                    };
                    skip_or_fail(opts, &mut skipped, err)?;
                    continue;
                }
                // `_mask.png` first, then `_mask_1.png`, `_mask_2.png`...
                mask_files.sort_by_key(|f| (f != &main, f.len(), f.clone()));
                e.masks = mask_files.into_iter().map(|f| rel_dir.join(f)).collect();
                e.class = None;
                e.stratum = Some(class);
            }
            entries.push(e);
        }
    }
    if found == 0 {
        return Err(DataError::layout(
            &base,
            format!(
                "no class folder ({}) found; is this the BUSI release?",
                CLASSES.join(", ")
            ),
        ));
    }
    let (name, task) = if segmentation {
        (
            "busi-seg",
            Task::Segmentation {
                classes: vec!["background".into(), "lesion".into()],
            },
        )
    } else {
        (
            "busi-cls",
            Task::Classification {
                classes: CLASSES.iter().map(|s| s.to_string()).collect(),
            },
        )
    };
    let ds = ImageDataset::build(name, root, task, entries, skipped, MaskValues::Binary, opts)?;
    Ok(ds.with_strata(CLASSES.iter().map(|s| s.to_string()).collect()))
}

#[cfg(test)]
mod tests {
    use super::mask_base;

    #[test]
    fn mask_names() {
        assert_eq!(mask_base("benign (1)_mask"), Some("benign (1)"));
        assert_eq!(mask_base("benign (4)_mask_1"), Some("benign (4)"));
        assert_eq!(mask_base("benign (4)"), None);
        assert_eq!(mask_base("benign_1"), None);
    }
}
