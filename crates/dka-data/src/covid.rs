//! COVID chest X-ray classification, both layouts of DATASETS.md, detected from the folder:
//!
//! - Kaggle "Chest X-ray (Covid-19 & Pneumonia)": `Data/{train,test}/{COVID19,NORMAL,PNEUMONIA}/*.jpg`
//!   (root may be the folder holding `Data` or `Data` itself); its train/test are official.
//! - COVID-19 Radiography Database: `{COVID,Normal,Lung_Opacity,Viral Pneumonia}/images/*.png`
//!   (the `masks/` folders and the metadata spreadsheets are ignored); four classes, no
//!   official split.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{skip_or_fail, ImageDataset, ImageEntry};
use crate::isic2018::list_files;
use crate::options::LoaderOptions;
use crate::sample::{Skipped, SplitName, Task};

pub const KAGGLE_CLASSES: [&str; 3] = ["COVID19", "NORMAL", "PNEUMONIA"];
pub const RADIOGRAPHY_CLASSES: [&str; 4] = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"];
pub(crate) const IMAGE_EXTS: [&str; 3] = [".jpg", ".jpeg", ".png"];

/// Sorted sub-folders of `dir` (hidden ones left out).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Which layout a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Kaggle,
    Radiography,
}

/// Detects the layout; `None` if neither fits.
pub fn detect(root: &Path) -> Option<(Layout, PathBuf)> {
    for base in [root.join("Data"), root.to_path_buf()] {
        if base.join("train").is_dir() {
            return Some((Layout::Kaggle, base));
        }
    }
    if RADIOGRAPHY_CLASSES
        .iter()
        .any(|c| root.join(c).join("images").is_dir())
    {
        return Some((Layout::Radiography, root.to_path_buf()));
    }
    None
}

/// Adds the images of one class folder.
fn add_class(
    root: &Path,
    dir: &Path,
    class: usize,
    official: Option<SplitName>,
    entries: &mut Vec<ImageEntry>,
) -> Result<()> {
    let rel = dir.strip_prefix(root).unwrap_or(dir).to_path_buf();
    for f in list_files(dir, &IMAGE_EXTS)? {
        let mut e = ImageEntry::new(rel.join(f));
        e.class = Some(class);
        e.official = official;
        entries.push(e);
    }
    Ok(())
}

/// Scans either COVID layout.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<ImageDataset> {
    let Some((layout, base)) = detect(root) else {
        return Err(DataError::layout(
            root,
            "neither COVID layout found: expected Data/{train,test}/{COVID19,NORMAL,PNEUMONIA}/ \
             or {COVID,Normal,Lung_Opacity,Viral Pneumonia}/images/",
        ));
    };
    let mut entries = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let classes: &[&str] = match layout {
        Layout::Kaggle => &KAGGLE_CLASSES,
        Layout::Radiography => &RADIOGRAPHY_CLASSES,
    };
    let expected: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
    let check_class =
        |dir: &Path, name: &str, skipped: &mut Vec<Skipped>| -> Result<Option<usize>> {
            match classes.iter().position(|c| *c == name) {
                Some(c) => Ok(Some(c)),
                None => {
                    let err = DataError::UnknownClassFolder {
                        path: dir.to_path_buf(),
                        expected: expected.clone(),
                    };
                    skip_or_fail(opts, skipped, err)?;
                    Ok(None)
                }
            }
        };
    match layout {
        Layout::Kaggle => {
            for part in subdirs(&base)? {
                let official = match part.as_str() {
                    "train" => SplitName::Train,
                    "test" => SplitName::Test,
                    "val" => SplitName::Val,
                    _ => {
                        let err = DataError::layout(
                            base.join(&part),
                            "expected only train/ and test/ here",
                        );
                        skip_or_fail(opts, &mut skipped, err)?;
                        continue;
                    }
                };
                for name in subdirs(&base.join(&part))? {
                    let dir = base.join(&part).join(&name);
                    if let Some(c) = check_class(&dir, &name, &mut skipped)? {
                        add_class(root, &dir, c, Some(official), &mut entries)?;
                    }
                }
            }
        }
        Layout::Radiography => {
            for name in subdirs(&base)? {
                let dir = base.join(&name);
                if let Some(c) = check_class(&dir, &name, &mut skipped)? {
                    let images = dir.join("images");
                    if !images.is_dir() {
                        return Err(DataError::MissingFile {
                            path: images,
                            what: "the class's images/ folder".into(),
                        });
                    }
                    add_class(root, &images, c, None, &mut entries)?;
                }
            }
        }
    }
    let task = Task::Classification { classes: expected };
    ImageDataset::build(
        "covid",
        root,
        task,
        entries,
        skipped,
        MaskValues::Binary,
        opts,
    )
}
