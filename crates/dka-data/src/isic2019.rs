//! ISIC-2019 (classification, 8 classes): `ISIC_2019_Training_Input/*.jpg` and
//! `ISIC_2019_Training_GroundTruth.csv` with header `image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`
//! (one-hot floats). The UNK column is empty in training; a row marked UNK is an error.
//! With `LoaderOptions::group_by_lesion`, and when `ISIC_2019_Training_Metadata.csv` has a
//! `lesion_id` column, images of one lesion form one group so no lesion straddles two splits. The test ground truth is not public,
//! so the test split is carved from training.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{skip_or_fail, ImageDataset, ImageEntry};
use crate::options::LoaderOptions;
use crate::sample::{Skipped, Task};

pub const CLASSES: [&str; 8] = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"];
const INPUT: &str = "ISIC_2019_Training_Input";
const GROUND_TRUTH: &str = "ISIC_2019_Training_GroundTruth.csv";
const METADATA: &str = "ISIC_2019_Training_Metadata.csv";

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|source| DataError::Csv {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads `lesion_id` per image from the metadata CSV, if present.
fn lesions(root: &Path) -> Result<HashMap<String, String>> {
    let path = root.join(METADATA);
    let mut out = HashMap::new();
    if !path.is_file() {
        return Ok(out);
    }
    let mut rdr = csv_reader(&path)?;
    let header = rdr
        .headers()
        .map_err(|source| DataError::Csv {
            path: path.clone(),
            source,
        })?
        .clone();
    let (Some(img), Some(lesion)) = (
        header.iter().position(|h| h == "image"),
        header.iter().position(|h| h == "lesion_id"),
    ) else {
        return Ok(out);
    };
    for row in rdr.records() {
        let row = row.map_err(|source| DataError::Csv {
            path: path.clone(),
            source,
        })?;
        if let (Some(i), Some(l)) = (row.get(img), row.get(lesion)) {
            if !l.is_empty() {
                out.insert(i.to_string(), l.to_string());
            }
        }
    }
    Ok(out)
}

/// Parses one ground-truth row into a class index.
fn parse_row(row: &csv::StringRecord) -> std::result::Result<usize, String> {
    let mut class = None;
    for (k, cell) in row.iter().skip(1).enumerate() {
        let v: f64 = cell
            .parse()
            .map_err(|_| format!("column {} is `{cell}`, not a number", k + 2))?;
        if v == 1.0 {
            if k == CLASSES.len() {
                return Err("row is labelled UNK, which has no training images".into());
            }
            if let Some(c) = class {
                return Err(format!(
                    "row has two classes ({} and {})",
                    CLASSES[c], CLASSES[k]
                ));
            }
            class = Some(k);
        } else if v != 0.0 {
            return Err(format!("column {} is {v}, expected 0 or 1", k + 2));
        }
    }
    class.ok_or_else(|| "row has no class".to_string())
}

/// Scans an ISIC-2019 release folder.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<ImageDataset> {
    let gt = root.join(GROUND_TRUTH);
    if !gt.is_file() {
        return Err(DataError::MissingFile {
            path: gt,
            what: "the ISIC-2019 ground-truth CSV".into(),
        });
    }
    let input = root.join(INPUT);
    if !input.is_dir() {
        return Err(DataError::MissingFile {
            path: input,
            what: "the ISIC-2019 training image folder".into(),
        });
    }
    let mut rdr = csv_reader(&gt)?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(|source| DataError::Csv {
            path: gt.clone(),
            source,
        })?
        .iter()
        .map(str::to_string)
        .collect();
    let expected: Vec<&str> = std::iter::once("image")
        .chain(CLASSES)
        .chain(std::iter::once("UNK"))
        .collect();
    if header != expected {
        return Err(DataError::CsvHeader {
            path: gt,
            expected: expected.join(","),
            found: header.join(","),
        });
    }
    let lesion = if opts.group_by_lesion {
        lesions(root)?
    } else {
        HashMap::new()
    };
    let mut entries = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let row = row.map_err(|source| DataError::Csv {
            path: gt.clone(),
            source,
        })?;
        let class = match parse_row(&row) {
            Ok(c) => c,
            Err(problem) => {
                let err = DataError::CsvRow {
                    path: gt.clone(),
                    line,
                    problem,
                };
                skip_or_fail(opts, &mut skipped, err)?;
                continue;
            }
        };
        let name = &row[0];
        let mut e = ImageEntry::new(PathBuf::from(INPUT).join(format!("{name}.jpg")));
        e.class = Some(class);
        e.group = lesion.get(name).cloned();
        entries.push(e);
    }
    let task = Task::Classification {
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    ImageDataset::build(
        "isic2019",
        root,
        task,
        entries,
        skipped,
        MaskValues::Binary,
        opts,
    )
}
