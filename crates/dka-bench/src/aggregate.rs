//! Tables laid out like the paper's, from `runs.csv`: rows = one grid axis (methods), columns
//! = combinations of other axes (dataset × fraction), cells = mean ± std over the remaining
//! axes (draws). `table.csv` is tidy (one row per cell, for pandas or a spreadsheet);
//! `table.md` has the paper's layout, with the paper's own numbers beside ours where the
//! table has them (transcribed from the paper: `experiments/paper/`).
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The paper's numbers for one table (`experiments/paper/*.csv`).
#[derive(Debug, Clone)]
pub struct PaperTable {
    /// (row, dataset, fraction) -> score (%)
    scores: Vec<(String, String, String, f64)>,
}

/// Our method names -> the paper's.
pub fn paper_method(ours: &str) -> &str {
    match ours {
        "full" => "Full Fine-tuning",
        "linear" => "Linear Probing",
        "bitfit" => "BitFit",
        "vpt" => "Prompt",
        "lora" => "LoRA",
        "adapter" => "Adapter",
        "adaptformer" => "Adapterformer",
        "convpass" => "Convpass",
        "ciat" => "CIAT",
        "aim" => "AIM",
        "dka" => "DKA",
        other => other,
    }
}

/// Our dataset names -> the names (or column groups) the paper's files use.
pub fn paper_datasets(ours: &str) -> &'static [&'static str] {
    match ours {
        "covid" => &["COVID"],
        "busi-cls" => &["BUSI", "BUSI classification (inferred)"],
        "busi-seg" => &["BUSI", "right-group"],
        "isic2019" => &["ISIC-2019", "left-group"],
        "isic2018" => &["ISIC-2018", "ISIC-2018 segmentation (inferred)"],
        "brats" => &["BRATS"],
        _ => &[],
    }
}

impl PaperTable {
    pub fn load(path: &Path, row_col: &str) -> anyhow::Result<Self> {
        let mut r = csv::Reader::from_path(path).with_context(|| path.display().to_string())?;
        let h = r.headers()?.clone();
        let col = |name: &str| {
            h.iter()
                .position(|c| c == name)
                .with_context(|| format!("{}: no column '{name}'", path.display()))
        };
        let (rc, dc, fc, sc) = (
            col(row_col)?,
            col(if h.iter().any(|c| c == "dataset") {
                "dataset"
            } else {
                "task"
            })?,
            col("fraction")?,
            col("score")?,
        );
        let mut scores = Vec::new();
        for rec in r.records() {
            let rec = rec?;
            let score: f64 = rec[sc]
                .parse()
                .with_context(|| format!("{}: score '{}'", path.display(), &rec[sc]))?;
            scores.push((
                rec[rc].to_string(),
                rec[dc].to_string(),
                rec[fc].to_string(),
                score,
            ));
        }
        Ok(Self { scores })
    }

    pub fn get(&self, row: &str, dataset: &str, fraction: &str) -> Option<f64> {
        let names = paper_datasets(dataset);
        let row = paper_method(row);
        self.scores
            .iter()
            .find(|(r, d, f, _)| r == row && f == fraction && names.contains(&d.as_str()))
            .map(|x| x.3)
    }
}

struct Cell {
    mean: f64,
    std: f64,
    n: usize,
}

fn cell(values: &[f64]) -> Cell {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Cell { mean, std, n }
}

/// Writes `out/table.csv` and `out/table.md` from `out/runs.csv` (values in %).
pub fn aggregate(
    out: &Path,
    metric: &str,
    row_axis: &str,
    row_order: &[String],
    col_axes: &[String],
    col_orders: &[Vec<String>],
    paper: Option<&PaperTable>,
) -> anyhow::Result<()> {
    let path = out.join("runs.csv");
    let mut r = csv::Reader::from_path(&path).with_context(|| path.display().to_string())?;
    let h = r.headers()?.clone();
    let idx = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .with_context(|| format!("{}: no column '{name}'", path.display()))
    };
    let (ri, mi) = (idx(row_axis)?, idx(metric)?);
    let ci: Vec<usize> = col_axes
        .iter()
        .map(|c| idx(c))
        .collect::<anyhow::Result<_>>()?;
    let mut groups: BTreeMap<(String, Vec<String>), Vec<f64>> = BTreeMap::new();
    for rec in r.records() {
        let rec = rec?;
        if let Ok(v) = rec[mi].parse::<f64>() {
            let key = (
                rec[ri].to_string(),
                ci.iter().map(|&i| rec[i].to_string()).collect(),
            );
            groups.entry(key).or_default().push(100.0 * v);
        }
    }
    // Column combinations in the grid's order.
    let mut combos: Vec<Vec<String>> = vec![vec![]];
    for order in col_orders {
        combos = combos
            .iter()
            .flat_map(|c| {
                order
                    .iter()
                    .map(move |v| [c.clone(), vec![v.clone()]].concat())
            })
            .collect();
    }
    let paper_for = |row: &str, combo: &[String]| -> Option<f64> {
        let (d, f) = (
            col_axes.iter().position(|c| c == "dataset")?,
            col_axes.iter().position(|c| c == "fraction")?,
        );
        paper?.get(row, &combo[d], &combo[f])
    };

    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head = vec![row_axis.to_string()];
    head.extend(col_axes.iter().cloned());
    head.extend(["mean", "std", "n", "paper"].map(String::from));
    w.write_record(&head)?;
    let mut md = String::new();
    writeln!(
        md,
        "{metric} (%), mean ± std over draws (n = runs per cell){}\n",
        if paper.is_some() {
            "; \"paper\": the paper's own number, transcribed from its poster (experiments/paper/README.md)"
        } else {
            ""
        }
    )?;
    let col_title = |c: &[String]| c.join(" ");
    let mut line = format!("| {row_axis} |");
    for c in &combos {
        line += &format!(" {} |", col_title(c));
        if paper.is_some() {
            line += " paper |";
        }
    }
    writeln!(md, "{line}")?;
    writeln!(
        md,
        "|---|{}",
        "---|".repeat(combos.len() * if paper.is_some() { 2 } else { 1 })
    )?;
    for row in row_order {
        let mut line = format!("| {row} |");
        for c in &combos {
            let p = paper_for(row, c);
            let ps = p.map(|v| format!("{v:.2}")).unwrap_or_default();
            match groups.get(&(row.clone(), c.clone())) {
                Some(v) => {
                    let x = cell(v);
                    let mut rec = vec![row.clone()];
                    rec.extend(c.iter().cloned());
                    rec.extend([
                        format!("{:.2}", x.mean),
                        format!("{:.2}", x.std),
                        x.n.to_string(),
                        ps.clone(),
                    ]);
                    w.write_record(&rec)?;
                    line += &format!(" {:.2} ± {:.2} (n={}) |", x.mean, x.std, x.n);
                }
                None => line += " – |",
            }
            if paper.is_some() {
                line += &format!(" {ps} |");
            }
        }
        writeln!(md, "{line}")?;
    }
    for (name, bytes) in [
        ("table.csv", w.into_inner()?),
        ("table.md", md.into_bytes()),
    ] {
        let tmp = out.join(format!("{name}.partial"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, out.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_mean_and_sample_std_over_draws_with_the_paper_beside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("runs.csv"),
            "id,dataset,draw,fraction,method,accuracy\na,busi-cls,0,1.25%,dka,0.70\nb,busi-cls,1,1.25%,dka,0.80\nc,busi-cls,0,1.25%,full,0.5\n",
        )
        .unwrap();
        let paper = PaperTable {
            scores: vec![("DKA".into(), "BUSI".into(), "1.25%".into(), 79.46)],
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        aggregate(
            d.path(),
            "accuracy",
            "method",
            &s(&["full", "dka"]),
            &s(&["dataset", "fraction"]),
            &[s(&["busi-cls"]), s(&["1.25%"])],
            Some(&paper),
        )
        .unwrap();
        let csv = std::fs::read_to_string(d.path().join("table.csv")).unwrap();
        // mean 75, sample std sqrt(((70-75)^2 + (80-75)^2) / 1) = 7.07
        assert!(
            csv.contains("dka,busi-cls,1.25%,75.00,7.07,2,79.46"),
            "{csv}"
        );
        let md = std::fs::read_to_string(d.path().join("table.md")).unwrap();
        assert!(md.contains("| dka | 75.00 ± 7.07 (n=2) | 79.46 |"), "{md}");
    }

    #[test]
    fn paper_names_map() {
        assert_eq!(paper_method("adaptformer"), "Adapterformer");
        assert!(paper_datasets("isic2019").contains(&"ISIC-2019"));
        let t = PaperTable::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../experiments/paper/table2_classification_acc.csv"),
            "method",
        )
        .unwrap();
        assert_eq!(t.get("dka", "busi-cls", "1.25%"), Some(79.46));
    }
}
