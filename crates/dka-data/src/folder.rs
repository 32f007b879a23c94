//! Generic image folder (bring your own data): `root/<class>/**/*.{jpg,jpeg,png}`, classes
//! are the sorted sub-folder names. If the root holds `train/` (and optionally `val/`,
//! `test/`) folders, each with class sub-folders, those are official splits and the classes
//! are the union of their sub-folders.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::covid::{subdirs, IMAGE_EXTS};
use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{ImageDataset, ImageEntry};
use crate::options::LoaderOptions;
use crate::sample::{SplitName, Task};

/// Image files under `dir`, recursively, relative to `root`, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut items: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    items.sort();
    for p in items {
        if p.is_dir() {
            walk(root, &p, out)?;
        } else {
            let lower = p.to_string_lossy().to_ascii_lowercase();
            if IMAGE_EXTS.iter().any(|x| lower.ends_with(x)) {
                out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            }
        }
    }
    Ok(())
}

/// Scans a class-per-folder tree.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<ImageDataset> {
    let parts: Vec<(PathBuf, Option<SplitName>)> = if root.join("train").is_dir() {
        [
            ("train", SplitName::Train),
            ("val", SplitName::Val),
            ("test", SplitName::Test),
        ]
        .into_iter()
        .filter(|(p, _)| root.join(p).is_dir())
        .map(|(p, s)| (root.join(p), Some(s)))
        .collect()
    } else {
        vec![(root.to_path_buf(), None)]
    };
    let mut classes = BTreeSet::new();
    for (dir, _) in &parts {
        classes.extend(subdirs(dir)?);
    }
    let classes: Vec<String> = classes.into_iter().collect();
    if classes.is_empty() {
        return Err(DataError::layout(root, "no class sub-folders found"));
    }
    let mut entries = Vec::new();
    for (dir, official) in &parts {
        for name in subdirs(dir)? {
            let class = classes.iter().position(|c| *c == name).unwrap_or(0);
            let mut files = Vec::new();
            walk(root, &dir.join(&name), &mut files)?;
            for f in files {
                let mut e = ImageEntry::new(f);
                e.class = Some(class);
                e.official = *official;
                entries.push(e);
            }
        }
    }
    let task = Task::Classification { classes };
    ImageDataset::build(
        "folder",
        root,
        task,
        entries,
        Vec::new(),
        MaskValues::Binary,
        opts,
    )
}
