//! Tables laid out like the paper's, from the records of the runs that belong to the current
//! grid: rows = one grid axis (methods), columns = combinations of other axes (dataset ×
//! fraction), cells = mean ± sample standard deviation (n − 1) over the remaining axes
//! (draws), in percent.
//!
//! `table.csv` is tidy, one row per cell that has runs: `<row axis>, <column axes...>, mean,
//! std, n, failed, paper, metric`, then `<m>_mean, <m>_std` for each extra metric (2
//! decimals; std 0.00 when n = 1; `paper` empty where the paper has no number), for pandas or a
//! spreadsheet. `table.md` has the paper's layout under a title and notes that describe the
//! runs actually made (backbone, weights, profile, selection, draws per cell), with the
//! paper's own numbers beside ours where it has them (transcribed from its poster:
//! `experiments/paper/`, a copy of `shared/paper/`).
//!
//! Which differences are real ([`compare`]): in each cell every row is compared with DKA (the
//! row labelled `dka`) and with the cell's best baseline, paired by draw; `table.csv` ends with
//! the mean differences (points), their paired t and percentile-bootstrap 95 % intervals, the
//! paired t-test's p-value and the number of pairs ([`compare::CSV_COLUMNS`]); `table.md`
//! marks with † a cell whose paired t interval against its reference contains 0, and lists
//! DKA against the best baseline per column.
pub mod compare;

use crate::config::record::{RunRecord, Status};
use crate::util::fs::write_atomic;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
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
        "covid" => &["COVID", "COVID classification (inferred)"],
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

/// How a grid's table is laid out and titled.
pub struct TableSpec<'a> {
    /// What the table shows (built from its runs: `report::titles`); the provenance line says
    /// how it was made.
    pub title: String,
    /// The paper's setting the grid reproduces, in italics under the title.
    pub subtitle: Option<String>,
    /// The metric of the cells (a fraction; shown in %). `primary` is each run's paper
    /// number (accuracy or foreground IoU).
    pub metric: String,
    /// More metrics, as extra columns of `table.csv`.
    pub extra: Vec<String>,
    pub row_axis: String,
    pub row_order: Vec<String>,
    pub col_axes: Vec<String>,
    /// `col_orders[i]` lists the values of `col_axes[i]` in table order.
    pub col_orders: Vec<Vec<String>>,
    pub paper: Option<&'a PaperTable>,
    /// Notes under the table (data choices, profile).
    pub notes: Vec<String>,
    /// The profile the grid ran with (`None`: the paper's settings as written).
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    mean: f64,
    std: f64,
    n: usize,
}

fn cell(values: &[f64]) -> Option<Cell> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (mean, std) = crate::util::stats::mean_std(values);
    Some(Cell { mean, std, n })
}

/// Every combination of the column axes' values, the first axis varying slowest.
fn combinations(col_orders: &[Vec<String>]) -> Vec<Vec<String>> {
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
    combos
}

/// The distinct values of an info field over `records`, joined.
fn distinct(records: &[&RunRecord], field: &str) -> String {
    let v: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.info.get(field).map(String::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    if v.is_empty() {
        "?".into()
    } else {
        v.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// One line saying how the runs behind a table were made, from the runs themselves.
pub fn provenance(records: &[&RunRecord], profile: Option<&str>, draws: (usize, usize)) -> String {
    let draws = if draws.0 == draws.1 {
        format!("{}", draws.0)
    } else {
        format!("{}–{}", draws.0, draws.1)
    };
    format!(
        "backbone {} (weights: {}); profile {}; selection: {}; precision {} on {}; mean ± sample std over {draws} draw(s) per cell",
        distinct(records, "backbone"),
        distinct(records, "weights"),
        profile.unwrap_or("paper settings"),
        distinct(records, "selection"),
        distinct(records, "precision"),
        distinct(records, "device"),
    )
}

/// A cell's key: the row's label and the column axes' values.
type Key = (String, Vec<String>);

/// The records of a grid gathered by cell: every metric's values (in percent), the table
/// metric per draw (for the paired comparisons), failed runs, runs without a value.
#[derive(Default)]
struct Gathered<'r> {
    values: BTreeMap<(Key, &'r str), Vec<f64>>,
    by_draw: BTreeMap<Key, Vec<(u64, f64)>>,
    failed: BTreeMap<Key, usize>,
    no_value: usize,
}

impl<'r> Gathered<'r> {
    fn new(t: &'r TableSpec, records: &[&RunRecord]) -> Self {
        let key = |r: &RunRecord| -> Option<Key> {
            let row = r.axes.get(&t.row_axis)?.clone();
            let cols: Option<Vec<String>> =
                t.col_axes.iter().map(|c| r.axes.get(c).cloned()).collect();
            Some((row, cols?))
        };
        let metrics: Vec<&str> = std::iter::once(t.metric.as_str())
            .chain(t.extra.iter().map(String::as_str))
            .collect();
        let mut g = Self::default();
        for r in records {
            let Some(k) = key(r) else { continue };
            if r.status == Status::Failed {
                *g.failed.entry(k).or_default() += 1;
                continue;
            }
            for m in &metrics {
                match r.metric(m) {
                    Some(v) => {
                        g.values.entry((k.clone(), m)).or_default().push(100.0 * v);
                        if *m == t.metric {
                            let draw = r.axes.get("draw").and_then(|d| d.parse().ok());
                            // Scores to 1e-9 points: equal scores reached through different
                            // float paths (threads) must not make a spread of 1e-14
                            // "significant".
                            let score = (100.0 * v * 1e9).round() / 1e9;
                            g.by_draw
                                .entry(k.clone())
                                .or_default()
                                .push((draw.unwrap_or(0), score));
                        }
                    }
                    None if *m == t.metric => g.no_value += 1,
                    None => {}
                }
            }
        }
        g
    }
}

/// A table being written: its spec, its cells, the column combinations and each column's
/// paired tests.
struct Table<'a> {
    t: &'a TableSpec<'a>,
    g: Gathered<'a>,
    combos: Vec<Vec<String>>,
    tests: Vec<compare::CellTests>,
    /// Whether the paper has a number for some cell shown (then each column has a paper column).
    paper: bool,
    /// Fewest and most draws behind a cell.
    draws: (usize, usize),
}

impl<'a> Table<'a> {
    fn new(t: &'a TableSpec<'a>, records: &[&'a RunRecord]) -> Self {
        let g = Gathered::new(t, records);
        let combos = combinations(&t.col_orders);
        let tests = combos
            .iter()
            .map(|c| {
                let cell: BTreeMap<String, Vec<(u64, f64)>> = t
                    .row_order
                    .iter()
                    .filter_map(|r| {
                        Some((r.clone(), g.by_draw.get(&(r.clone(), c.clone()))?.clone()))
                    })
                    .collect();
                compare::compare(&t.row_order, &cell)
            })
            .collect();
        let mut table = Self {
            t,
            g,
            combos,
            tests,
            paper: false,
            draws: (0, 0),
        };
        table.paper = t
            .row_order
            .iter()
            .any(|r| table.combos.iter().any(|c| table.paper_for(r, c).is_some()));
        let ns: Vec<usize> = t
            .row_order
            .iter()
            .flat_map(|r| table.combos.iter().map(move |c| (r, c)))
            .filter_map(|(r, c)| table.get(r, c, &t.metric).map(|x| x.n))
            .collect();
        table.draws = (
            ns.iter().copied().min().unwrap_or(0),
            ns.iter().copied().max().unwrap_or(0),
        );
        table
    }

    fn paper_for(&self, row: &str, combo: &[String]) -> Option<f64> {
        let d = self.t.col_axes.iter().position(|c| c == "dataset")?;
        let f = self.t.col_axes.iter().position(|c| c == "fraction")?;
        self.t.paper?.get(row, &combo[d], &combo[f])
    }

    fn get(&self, row: &str, c: &[String], m: &str) -> Option<Cell> {
        self.g
            .values
            .get(&((row.to_string(), c.to_vec()), m))
            .and_then(|v| cell(v))
    }

    fn failed(&self, row: &str, c: &[String]) -> usize {
        self.g
            .failed
            .get(&(row.to_string(), c.to_vec()))
            .copied()
            .unwrap_or(0)
    }

    /// `table.csv`: one row per cell that has runs.
    fn csv(&self) -> anyhow::Result<Vec<u8>> {
        let t = self.t;
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut head = vec![t.row_axis.clone()];
        head.extend(t.col_axes.iter().cloned());
        head.extend(["mean", "std", "n", "failed", "paper", "metric"].map(String::from));
        for m in &t.extra {
            head.extend([format!("{m}_mean"), format!("{m}_std")]);
        }
        head.extend(compare::CSV_COLUMNS.map(String::from));
        w.write_record(&head)?;
        for row in &t.row_order {
            for (c, tests) in self.combos.iter().zip(&self.tests) {
                let Some(x) = self.get(row, c, &t.metric) else {
                    continue;
                };
                let mut rec = vec![row.clone()];
                rec.extend(c.iter().cloned());
                rec.extend([
                    format!("{:.2}", x.mean),
                    format!("{:.2}", x.std),
                    x.n.to_string(),
                    self.failed(row, c).to_string(),
                    self.paper_for(row, c)
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_default(),
                    t.metric.clone(),
                ]);
                for m in &t.extra {
                    match self.get(row, c, m) {
                        Some(e) => rec.extend([format!("{:.2}", e.mean), format!("{:.2}", e.std)]),
                        None => rec.extend([String::new(), String::new()]),
                    }
                }
                rec.extend(compare::csv_fields(tests, row));
                w.write_record(&rec)?;
            }
        }
        Ok(w.into_inner()?)
    }
}

mod markdown;

/// Writes `out/table.csv` and `out/table.md` from `records` (the current grid's runs; failed
/// ones are counted per cell). `left_out` older runs in the folder are mentioned.
pub fn aggregate(
    out: &Path,
    t: &TableSpec,
    records: &[&RunRecord],
    left_out: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        t.col_axes.len() == t.col_orders.len(),
        "{} column axes but {} value orders",
        t.col_axes.len(),
        t.col_orders.len()
    );
    let table = Table::new(t, records);
    write_atomic(&out.join("table.csv"), &table.csv()?)?;
    write_atomic(
        &out.join("table.md"),
        table.markdown(records, left_out)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
