//! Generic CSV (bring your own data). The root is a `.csv` file, or a folder holding exactly
//! one. Paths in the CSV are relative to the CSV's folder, which becomes the dataset root.
//!
//! Header: an `image` column and either a `label` column (classification; classes are the
//! sorted distinct labels) or a `mask` column (segmentation); optional `split`
//! (`train`/`val`/`test`) and `group` columns. Column names are configurable in
//! [`CsvOptions`](crate::options::CsvOptions).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_io::MaskValues;
use crate::image_set::{skip_or_fail, ImageDataset, ImageEntry};
use crate::options::LoaderOptions;
use crate::sample::{Skipped, SplitName, Task};

/// The CSV file a root names.
fn find_csv(root: &Path) -> Result<PathBuf> {
    if root.is_file() {
        return Ok(root.to_path_buf());
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let p = e.map_err(|e| DataError::io(root, e))?.path();
        if p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")) {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(DataError::MissingFile {
            path: root.to_path_buf(),
            what: "a .csv file".into(),
        }),
        n => Err(DataError::layout(
            root,
            format!("{n} .csv files here; pass the one to use as the root"),
        )),
    }
}

/// Scans a CSV-described dataset.
pub fn open(root: &Path, opts: &LoaderOptions) -> Result<ImageDataset> {
    let csv_path = find_csv(root)?;
    let base = csv_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let c = &opts.csv;
    let csv_err = |source| DataError::Csv {
        path: csv_path.clone(),
        source,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&csv_path)
        .map_err(csv_err)?;
    let header: Vec<String> = rdr
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(image_col), target) = (
        col(&c.image_column),
        col(&c.label_column)
            .map(|i| (i, false))
            .or(col(&c.mask_column).map(|i| (i, true))),
    ) else {
        return Err(DataError::CsvHeader {
            path: csv_path.clone(),
            expected: format!(
                "{},{} (or {},{})",
                c.image_column, c.label_column, c.image_column, c.mask_column
            ),
            found: header.join(","),
        });
    };
    let Some((target_col, segmentation)) = target else {
        return Err(DataError::CsvHeader {
            path: csv_path.clone(),
            expected: format!(
                "{},{} (or {},{})",
                c.image_column, c.label_column, c.image_column, c.mask_column
            ),
            found: header.join(","),
        });
    };
    let split_col = col(&c.split_column);
    let group_col = col(&c.group_column);
    let mut rows = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(csv_err)?;
        let line = row.position().map_or(i as u64 + 2, |p| p.line());
        let cell = |k: Option<usize>| k.and_then(|k| row.get(k)).unwrap_or("").to_string();
        let (image, target) = (cell(Some(image_col)), cell(Some(target_col)));
        let split = cell(split_col);
        let problem = if row.iter().any(|f| f.contains(['\n', '\r'])) {
            // No path, label or split holds a line break: a quote left open swallowed lines.
            Some("a quoted field runs over several lines (a quote left open?)".to_string())
        } else if image.is_empty() {
            Some(format!("empty `{}`", c.image_column))
        } else if target.is_empty() {
            Some(format!("empty `{}`", header[target_col]))
        } else if !matches!(split.as_str(), "" | "train" | "val" | "test") {
            Some(format!("split `{split}` is not train, val or test"))
        } else {
            None
        };
        if let Some(problem) = problem {
            let err = DataError::CsvRow {
                path: csv_path.clone(),
                line,
                problem,
            };
            skip_or_fail(opts, &mut skipped, err)?;
            continue;
        }
        let official = match split.as_str() {
            "train" => Some(SplitName::Train),
            "val" => Some(SplitName::Val),
            "test" => Some(SplitName::Test),
            _ => None,
        };
        let group = Some(cell(group_col)).filter(|g| !g.is_empty());
        rows.push((image, target, official, group));
    }
    let classes: Vec<String> = if segmentation {
        vec!["background".into(), "foreground".into()]
    } else {
        rows.iter()
            .map(|r| r.1.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let entries = rows
        .into_iter()
        .map(|(image, target, official, group)| {
            let mut e = ImageEntry::new(PathBuf::from(image));
            if segmentation {
                e.masks = vec![PathBuf::from(target)];
            } else {
                e.class = classes.iter().position(|c| *c == target);
            }
            e.official = official;
            e.group = group;
            e
        })
        .collect();
    let (task, values) = if segmentation {
        let values = if c.binary_masks {
            MaskValues::Binary
        } else {
            MaskValues::Index
        };
        (Task::Segmentation { classes }, values)
    } else {
        (Task::Classification { classes }, MaskValues::Binary)
    };
    ImageDataset::build("csv", &base, task, entries, skipped, values, opts)
}
