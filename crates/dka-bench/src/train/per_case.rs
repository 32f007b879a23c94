//! Per-case scores of an evaluation, as nnU-Net's `summary.json` and MONAI's `MetricsSaver`
//! give them: one CSV row per image (or per volume case, its slices' pixels pooled), and a
//! `summary.json` beside it with the rows' means and the pooled metrics, saying which of them
//! the paper's tables use.
use super::evaluate::{Evaluation, Outcome};
use super::metrics::Confusion;
use crate::config::metrics::{metric_title, primary_metric};
use anyhow::Context;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// The rows of a per-case table: a header and one row of cells per case.
pub struct CaseTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Every numeric column's mean over the cases where it is defined, and that count.
    pub means: BTreeMap<String, (f64, usize)>,
    /// What a row is, in words.
    pub row_is: String,
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// The per-case table of `outcomes` (position in the evaluated records, outcome), each
/// position named by `name` (rows of equal names are one case: their pixels are pooled).
pub fn table(
    outcomes: &[(usize, Outcome)],
    classes: &[String],
    name: &dyn Fn(usize) -> String,
    volumes: bool,
) -> CaseTable {
    let mut sorted: Vec<&(usize, Outcome)> = outcomes.iter().collect();
    sorted.sort_by_key(|(pos, _)| *pos);
    let mut header = vec!["file".to_string()];
    let mut rows = Vec::new();
    let mut columns: Vec<Vec<Option<f64>>> = Vec::new();
    let segmentation = matches!(sorted.first(), Some((_, Outcome::Pixels(_))));
    if segmentation {
        for c in classes {
            header.push(format!("iou_{c}"));
        }
        for c in classes {
            header.push(format!("dice_{c}"));
        }
        header.extend(["iou_foreground".to_string(), "dice_foreground".to_string()]);
        // Cases in order of their first record.
        let mut order: Vec<String> = Vec::new();
        let mut by_case: BTreeMap<String, Confusion> = BTreeMap::new();
        for (pos, o) in &sorted {
            let Outcome::Pixels(conf) = o else { continue };
            let key = name(*pos);
            match by_case.get_mut(&key) {
                Some(acc) => acc.merge(conf),
                None => {
                    order.push(key.clone());
                    by_case.insert(key, conf.clone());
                }
            }
        }
        for key in order {
            let conf = &by_case[&key];
            let n = classes.len();
            let iou: Vec<Option<f64>> = (0..n).map(|c| conf.iou(c)).collect();
            let dice: Vec<Option<f64>> = (0..n).map(|c| conf.dice(c)).collect();
            let fg_mean = |v: &[Option<f64>]| {
                let d: Vec<f64> = v.iter().skip(1).flatten().copied().collect();
                (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
            };
            let mut values = iou.clone();
            values.extend(dice.iter().copied());
            values.push(fg_mean(&iou));
            values.push(fg_mean(&dice));
            let mut row = vec![key];
            row.extend(values.iter().map(|v| cell(*v)));
            rows.push(row);
            columns.push(values);
        }
    } else {
        header.extend(["true".to_string(), "pred".to_string()]);
        for c in classes {
            header.push(format!("prob_{c}"));
        }
        header.extend(["correct".to_string(), "prob_true".to_string()]);
        for (pos, o) in &sorted {
            let Outcome::Class { probs, label } = o else {
                continue;
            };
            let pred = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(i, _)| i);
            let truth = classes
                .get(*label as usize)
                .cloned()
                .unwrap_or_else(|| label.to_string());
            let mut row = vec![name(*pos), truth, classes[pred].clone()];
            row.extend(probs.iter().map(|p| format!("{p:.6}")));
            let correct = f64::from(pred as i64 == *label);
            let p_true = probs.get(*label as usize).map(|&p| p as f64);
            row.extend([format!("{correct}"), cell(p_true)]);
            rows.push(row);
            let mut values: Vec<Option<f64>> = probs.iter().map(|&p| Some(p as f64)).collect();
            values.extend([Some(correct), p_true]);
            columns.push(values);
        }
    }
    // Numeric columns start after `file` (classification: after `true`, `pred`).
    let first_numeric = if segmentation { 1 } else { 3 };
    let mut means = BTreeMap::new();
    for (k, col) in header.iter().enumerate().skip(first_numeric) {
        let vals: Vec<f64> = columns
            .iter()
            .filter_map(|r| r[k - first_numeric])
            .collect();
        let mean = if vals.is_empty() {
            f64::NAN
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        };
        means.insert(col.clone(), (mean, vals.len()));
    }
    let row_is = match (segmentation, volumes) {
        (true, true) => "one volume case (the pixels of its evaluated slices pooled)",
        _ => "one image",
    }
    .to_string();
    CaseTable {
        header,
        rows,
        means,
        row_is,
    }
}

/// Writes `t` to `csv_path` and `summary.json` beside it: the rows' means, the pooled
/// metrics (`pooled`, the numbers `dka eval` prints and the paper's tables use) and `about`
/// (the run, the data).
pub fn write(
    t: &CaseTable,
    pooled: &Evaluation,
    segmentation: bool,
    csv_path: &Path,
    about: serde_json::Value,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = csv_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut w = csv::Writer::from_path(csv_path).with_context(|| csv_path.display().to_string())?;
    w.write_record(&t.header)?;
    for r in &t.rows {
        w.write_record(r)?;
    }
    w.flush()?;
    let primary = primary_metric(segmentation);
    let number = |x: f64| if x.is_finite() { json!(x) } else { json!(null) };
    let per_case: serde_json::Map<String, serde_json::Value> = t
        .means
        .iter()
        .map(|(k, (m, n))| (k.clone(), json!({"mean": number(*m), "cases": n})))
        .collect();
    let pooled_json: serde_json::Map<String, serde_json::Value> = pooled
        .values()
        .into_iter()
        .map(|(k, v)| (k, number(v)))
        .collect();
    let paper = if segmentation {
        format!(
            "pooled.{primary}: {} from the confusion of every pixel of the set (the paper's \
             tables); per_case_mean averages the cases instead and weighs small lesions as much \
             as large ones",
            metric_title(primary)
        )
    } else {
        format!(
            "pooled.{primary} (the paper's tables); for classification the mean of `correct` \
             over the rows is the same number"
        )
    };
    let summary = json!({
        "about": about,
        "cases": t.rows.len(),
        "row": t.row_is,
        "per_case_mean": per_case,
        "pooled": pooled_json,
        "paper_metric": {"name": primary, "value": number(pooled.get(primary)), "which": paper},
        "per_case_csv": csv_path.file_name().map(|f| f.to_string_lossy().to_string()),
    });
    let path = csv_path.with_file_name("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| path.display().to_string())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentation_rows_pool_a_cases_slices_and_means_skip_undefined_cells() {
        let classes = vec!["background".to_string(), "lesion".to_string()];
        let conf = |pred: &[i64], target: &[i64]| {
            let mut c = Confusion::new(2);
            c.add(pred, target);
            Outcome::Pixels(c)
        };
        // Case a: two slices; case b: no lesion predicted or present (IoU undefined).
        let outcomes = vec![
            (0, conf(&[1, 1, 0, 0], &[1, 0, 0, 0])),
            (1, conf(&[1, 0, 0, 0], &[1, 1, 0, 0])),
            (2, conf(&[0, 0, 0, 0], &[0, 0, 0, 0])),
        ];
        let name = |pos: usize| if pos < 2 { "a" } else { "b" }.to_string();
        let t = table(&outcomes, &classes, &name, true);
        assert_eq!(t.rows.len(), 2);
        let col = |n: &str| t.header.iter().position(|h| h == n).unwrap();
        // Case a pooled: lesion TP 2, pred 3, target 3 → IoU 2/4, Dice 4/6.
        assert_eq!(t.rows[0][col("iou_lesion")], "0.500000");
        assert_eq!(t.rows[0][col("dice_lesion")], "0.666667");
        assert_eq!(t.rows[1][col("iou_lesion")], "");
        assert_eq!(t.means["iou_lesion"], (0.5, 1));
        assert_eq!(t.means["iou_background"].1, 2);
    }

    #[test]
    fn classification_rows_name_the_classes() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let outcomes = vec![
            (
                1,
                Outcome::Class {
                    probs: vec![0.2, 0.8],
                    label: 0,
                },
            ),
            (
                0,
                Outcome::Class {
                    probs: vec![0.9, 0.1],
                    label: 0,
                },
            ),
        ];
        let t = table(&outcomes, &classes, &|p| format!("img{p}.png"), false);
        assert_eq!(
            t.header,
            [
                "file",
                "true",
                "pred",
                "prob_a",
                "prob_b",
                "correct",
                "prob_true"
            ]
        );
        assert_eq!(t.rows[0][..3], ["img0.png", "a", "a"]);
        assert_eq!(t.rows[1][..3], ["img1.png", "a", "b"]);
        assert_eq!(t.means["correct"], (0.5, 2));
    }
}
