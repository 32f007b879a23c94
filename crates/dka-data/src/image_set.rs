//! The dataset type behind every 2D loader: a list of image (+ mask) files that a release's
//! scanner found, validated in parallel, with `skip_bad` applied in one place.

use std::path::{Path, PathBuf};

use image::GrayImage;
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image_io::{
    check_decodes, dimensions, read_mask, read_rgb, read_rgb_scaled, MaskValues,
};
use crate::options::{CheckLevel, LoaderOptions};
use crate::preset::Preprocess;
use crate::sample::{RawSample, Record, Skipped, SplitName, Task};

/// One image found by a scanner, paths relative to the root.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub image: PathBuf,
    /// Masks OR-ed (binary) or overlaid (index) into one class map; empty for classification.
    pub masks: Vec<PathBuf>,
    pub class: Option<usize>,
    /// Stratum for splits; defaults to the class (0 for segmentation).
    pub stratum: Option<usize>,
    /// Defaults to the image path.
    pub group: Option<String>,
    pub official: Option<SplitName>,
}

impl ImageEntry {
    pub fn new(image: PathBuf) -> Self {
        ImageEntry {
            image,
            masks: Vec::new(),
            class: None,
            stratum: None,
            group: None,
            official: None,
        }
    }
}

/// A scanned 2D dataset.
#[derive(Debug)]
pub struct ImageDataset {
    name: String,
    root: PathBuf,
    task: Task,
    records: Vec<Record>,
    skipped: Vec<Skipped>,
    mask_values: MaskValues,
    strata: Vec<String>,
}

/// Path of `rel` as a forward-slash id.
pub(crate) fn rel_id(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn validate(root: &Path, e: &ImageEntry, check: CheckLevel) -> Result<()> {
    let image = root.join(&e.image);
    let size = dimensions(&image)?;
    for m in &e.masks {
        let mask = root.join(m);
        if !mask.is_file() {
            return Err(DataError::MissingMask {
                image: image.clone(),
                expected: mask,
            });
        }
        let msize = dimensions(&mask)?;
        if msize != size {
            return Err(DataError::MaskSizeMismatch {
                image: image.clone(),
                mask,
                image_size: size,
                mask_size: msize,
            });
        }
    }
    if check == CheckLevel::Decode {
        check_decodes(&image)?;
        for m in &e.masks {
            check_decodes(&root.join(m))?;
        }
    }
    Ok(())
}

/// The file an error is about, for the skip list.
pub(crate) fn error_path(e: &DataError) -> PathBuf {
    match e {
        DataError::Io { path, .. }
        | DataError::MissingFile { path, .. }
        | DataError::Layout { path, .. }
        | DataError::Decode { path, .. }
        | DataError::Encode { path, .. }
        | DataError::UnknownClassFolder { path, .. }
        | DataError::CsvHeader { path, .. }
        | DataError::CsvRow { path, .. }
        | DataError::Csv { path, .. }
        | DataError::Nifti { path, .. }
        | DataError::Manifest { path, .. }
        | DataError::HashMismatch { path, .. }
        | DataError::Cache { path, .. } => path.clone(),
        DataError::MaskSizeMismatch { mask, .. } => mask.clone(),
        DataError::MissingMask { image, .. } => image.clone(),
        DataError::UnknownDataset { .. } | DataError::Config { .. } => PathBuf::new(),
    }
}

/// Either fails with `err` or, under `skip_bad`, records it and goes on.
pub(crate) fn skip_or_fail(
    opts: &LoaderOptions,
    skipped: &mut Vec<Skipped>,
    err: DataError,
) -> Result<()> {
    if !opts.skip_bad {
        return Err(err);
    }
    tracing::warn!("skipping: {err}");
    skipped.push(Skipped {
        path: error_path(&err),
        reason: err.to_string(),
    });
    Ok(())
}

impl ImageDataset {
    /// Validates `entries` (in parallel), applies `skip_bad`, sorts by id. `skipped` carries
    /// what the scanner itself already left out.
    pub fn build(
        name: &str,
        root: &Path,
        task: Task,
        entries: Vec<ImageEntry>,
        mut skipped: Vec<Skipped>,
        mask_values: MaskValues,
        opts: &LoaderOptions,
    ) -> Result<Self> {
        let mut entries = entries;
        entries.sort_by(|a, b| a.image.cmp(&b.image));
        let checks: Vec<Result<()>> = entries
            .par_iter()
            .map(|e| validate(root, e, opts.check))
            .collect();
        let mut records = Vec::with_capacity(entries.len());
        for (e, check) in entries.into_iter().zip(checks) {
            if let Err(err) = check {
                skip_or_fail(opts, &mut skipped, err)?;
                continue;
            }
            let id = rel_id(&e.image);
            let mut files = vec![e.image];
            files.extend(e.masks);
            records.push(Record {
                group: e.group.unwrap_or_else(|| id.clone()),
                id,
                files,
                class: e.class,
                stratum: e.stratum.or(e.class).unwrap_or(0),
                official: e.official,
            });
        }
        if !skipped.is_empty() {
            tracing::warn!("{name}: skipped {} bad file(s)", skipped.len());
        }
        let strata = match &task {
            Task::Classification { classes } => classes.clone(),
            Task::Segmentation { .. } => vec!["all".into()],
        };
        Ok(ImageDataset {
            strata,
            name: name.to_string(),
            root: root.to_path_buf(),
            task,
            records,
            skipped,
            mask_values,
        })
    }
}

impl ImageDataset {
    /// Names the strata that the entries' `stratum` fields index (e.g. BUSI's tissue
    /// classes for its segmentation task).
    pub fn with_strata(mut self, strata: Vec<String>) -> Self {
        self.strata = strata;
        self
    }
}

impl Dataset for ImageDataset {
    fn name(&self) -> &str {
        &self.name
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn task(&self) -> &Task {
        &self.task
    }

    fn records(&self) -> &[Record] {
        &self.records
    }

    fn strata(&self) -> Vec<String> {
        self.strata.clone()
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Images without masks may come out of a reduced JPEG decode (masks must match their
    /// image's size, so segmentation samples are decoded fully).
    fn read_for(&self, index: usize, pre: &Preprocess) -> Result<RawSample> {
        let rec = &self.records[index];
        if rec.files.len() != 1 {
            return self.read(index);
        }
        let image = read_rgb_scaled(&self.root.join(&rec.files[0]), &|w, h| {
            pre.decode_scale(w, h)
        })?;
        Ok(RawSample {
            image,
            mask: None,
            class: rec.class,
        })
    }

    fn read(&self, index: usize) -> Result<RawSample> {
        let rec = &self.records[index];
        let image_path = self.root.join(&rec.files[0]);
        let image = read_rgb(&image_path)?;
        let mut mask: Option<GrayImage> = None;
        for m in &rec.files[1..] {
            let mpath = self.root.join(m);
            let next = read_mask(&mpath, self.mask_values)?;
            if next.dimensions() != image.dimensions() {
                return Err(DataError::MaskSizeMismatch {
                    image: image_path,
                    mask: mpath,
                    image_size: image.dimensions(),
                    mask_size: next.dimensions(),
                });
            }
            mask = Some(match mask {
                None => next,
                Some(mut acc) => {
                    // OR for binary masks; later masks overlay earlier ones for index masks.
                    for (a, &b) in acc.iter_mut().zip(next.as_raw()) {
                        if b != 0 {
                            *a = (*a).max(b);
                        }
                    }
                    acc
                }
            });
        }
        if self.task.is_segmentation() && mask.is_none() {
            return Err(DataError::MissingMask {
                image: image_path.clone(),
                expected: image_path,
            });
        }
        Ok(RawSample {
            image,
            mask,
            class: rec.class,
        })
    }
}
