//! Which differences in a table cell are real: every row against DKA and against the best
//! baseline, paired by draw (same split, same draw index) with [`crate::report::paired::paired`].
//!
//! "DKA" is the row labelled `dka` (any case). The best baseline of a cell is its row with
//! the highest mean other than DKA; a table without a DKA row compares every row with its best
//! row. A row is *indistinguishable* from its reference (DKA, or for DKA's own row the best
//! baseline) when the paired t 95 % interval of the mean difference contains 0; with fewer than
//! two paired draws there is no test.
use crate::report::paired::{pair_by_draw, paired, Paired};
use std::collections::BTreeMap;

/// Seed of the bootstrap intervals (fixed, so a table is reproducible).
pub const BOOTSTRAP_SEED: u64 = 0x5EED;

/// The row that is DKA, if any: its label is `dka` in any case.
pub fn dka_row(rows: &[String]) -> Option<&String> {
    rows.iter().find(|r| r.eq_ignore_ascii_case("dka"))
}

/// A row's tests in one cell (differences are this row minus the reference, in points).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowTests {
    pub vs_dka: Option<Paired>,
    pub vs_best: Option<Paired>,
}

/// The comparisons of one cell (one column combination).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellTests {
    /// The best row other than DKA (the best row when there is no DKA row).
    pub best: Option<String>,
    pub dka: Option<String>,
    pub rows: BTreeMap<String, RowTests>,
}

fn mean(v: &[(u64, f64)]) -> f64 {
    v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64
}

/// Tests every row of one cell; `values[row]` holds its runs as `(draw, score)`.
pub fn compare(rows: &[String], values: &BTreeMap<String, Vec<(u64, f64)>>) -> CellTests {
    let dka = dka_row(rows).filter(|d| values.get(*d).is_some_and(|v| !v.is_empty()));
    let mut best: Option<(&String, f64)> = None;
    for r in rows {
        if Some(r) == dka {
            continue;
        }
        let Some(v) = values.get(r).filter(|v| !v.is_empty()) else {
            continue;
        };
        let m = mean(v);
        if best.is_none_or(|(_, b)| m > b) {
            best = Some((r, m));
        }
    }
    let best = best.map(|b| b.0);
    let test = |a: &String, b: &String| {
        let (x, y) = pair_by_draw(&values[a], &values[b]);
        paired(&x, &y, BOOTSTRAP_SEED)
    };
    let mut out = BTreeMap::new();
    for r in rows {
        if values.get(r).is_none_or(|v| v.is_empty()) {
            continue;
        }
        out.insert(
            r.clone(),
            RowTests {
                vs_dka: dka.filter(|d| *d != r).map(|d| test(r, d)),
                vs_best: best.filter(|b| *b != r).map(|b| test(r, b)),
            },
        );
    }
    CellTests {
        best: best.cloned(),
        dka: dka.cloned(),
        rows: out,
    }
}

impl CellTests {
    /// The test a row's mark refers to: against DKA, or for DKA (and in tables without DKA)
    /// against the best baseline.
    pub fn reference_test(&self, row: &str) -> Option<&Paired> {
        let t = self.rows.get(row)?;
        match &self.dka {
            Some(d) if d != row => t.vs_dka.as_ref(),
            _ => t.vs_best.as_ref(),
        }
    }

    /// Whether the row is indistinguishable from its reference (the 95 % paired t interval
    /// contains 0); `None` when there is no test (fewer than two paired draws).
    pub fn indistinguishable(&self, row: &str) -> Option<bool> {
        let (lo, hi) = self.reference_test(row)?.t_ci95?;
        Some(lo <= 0.0 && 0.0 <= hi)
    }
}

/// A p-value as tables print it: 4 decimals, or scientific below 1e-4.
pub fn format_p(p: f64) -> String {
    if p > 0.0 && p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The `table.csv` columns of the comparisons, after the metric columns.
pub const CSV_COLUMNS: [&str; 15] = [
    "diff_vs_dka",
    "diff_vs_dka_ci_low",
    "diff_vs_dka_ci_high",
    "diff_vs_dka_boot_low",
    "diff_vs_dka_boot_high",
    "p_vs_dka",
    "pairs_vs_dka",
    "best_baseline",
    "diff_vs_best",
    "diff_vs_best_ci_low",
    "diff_vs_best_ci_high",
    "diff_vs_best_boot_low",
    "diff_vs_best_boot_high",
    "p_vs_best",
    "pairs_vs_best",
];

fn paired_fields(p: Option<&Paired>) -> [String; 7] {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_default();
    match p {
        None => Default::default(),
        Some(p) => [
            f(Some(p.mean_diff).filter(|m| m.is_finite())),
            f(p.t_ci95.map(|c| c.0)),
            f(p.t_ci95.map(|c| c.1)),
            f(p.boot_ci95.map(|c| c.0)),
            f(p.boot_ci95.map(|c| c.1)),
            p.p_value.map(format_p).unwrap_or_default(),
            p.n.to_string(),
        ],
    }
}

/// A row's values for [`CSV_COLUMNS`] in one cell.
pub fn csv_fields(tests: &CellTests, row: &str) -> Vec<String> {
    let t = tests.rows.get(row).cloned().unwrap_or_default();
    let mut v: Vec<String> = paired_fields(t.vs_dka.as_ref()).into();
    v.push(tests.best.clone().unwrap_or_default());
    v.extend(paired_fields(t.vs_best.as_ref()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Expected values computed with SciPy 1.17.1 (the pinned one):
    /// `d = a - b; scipy.stats.ttest_rel(a, b)` and
    /// `scipy.stats.t.interval(0.95, n - 1, loc=d.mean(), scale=scipy.stats.sem(d))`.
    #[test]
    fn rows_against_dka_and_the_best_baseline_match_scipy() {
        let rows = s(&["full", "lora", "adapter", "DKA"]);
        let v = |x: &[f64]| -> Vec<(u64, f64)> {
            x.iter().enumerate().map(|(i, &y)| (i as u64, y)).collect()
        };
        let values: BTreeMap<String, Vec<(u64, f64)>> = [
            ("full", v(&[70.1, 72.4, 69.8, 71.5, 70.9])),
            ("lora", v(&[74.2, 75.9, 73.1, 76.3, 74.8])),
            ("adapter", v(&[73.0, 74.1, 72.2, 75.5, 73.9])),
            ("DKA", v(&[76.5, 77.2, 74.9, 78.8, 76.1])),
        ]
        .into_iter()
        .map(|(k, x)| (k.to_string(), x))
        .collect();
        let t = compare(&rows, &values);
        assert_eq!(t.dka.as_deref(), Some("DKA"));
        assert_eq!(t.best.as_deref(), Some("lora"), "highest mean but DKA");
        // lora − DKA: d = [-2.3, -1.3, -1.8, -2.5, -1.3]
        let p = t.rows["lora"].vs_dka.as_ref().unwrap();
        assert_eq!(p.n, 5);
        assert!(close(p.mean_diff, -1.84, 1e-12));
        let (lo, hi) = p.t_ci95.unwrap();
        assert!(close(lo, -2.5290955530302686, 1e-9), "{lo}");
        assert!(close(hi, -1.1509044469697325, 1e-9), "{hi}");
        assert!(close(p.p_value.unwrap(), 0.0017665112521115592, 1e-12));
        // DKA − lora (its best baseline): the same interval, mirrored.
        let q = t.rows["DKA"].vs_best.as_ref().unwrap();
        assert!(close(q.mean_diff, 1.84, 1e-12));
        assert!(t.rows["DKA"].vs_dka.is_none());
        assert_eq!(t.indistinguishable("DKA"), Some(false));
        // adapter − DKA: d = [-3.5, -3.1, -2.7, -3.3, -2.2], mean -2.96.
        let a = t.rows["adapter"].vs_dka.as_ref().unwrap();
        let (lo, hi) = a.t_ci95.unwrap();
        assert!(close(lo, -3.6027935141464025, 1e-9), "{lo}");
        assert!(close(hi, -2.3172064858535966, 1e-9), "{hi}");
        assert!(close(a.p_value.unwrap(), 0.00021567813834256797, 1e-12));
        // adapter − lora: d = [-1.2, -1.8, -0.9, -0.8, -0.9], mean -1.12.
        let b = t.rows["adapter"].vs_best.as_ref().unwrap();
        let (lo, hi) = b.t_ci95.unwrap();
        assert!(close(lo, -1.6274138586013522, 1e-9), "{lo}");
        assert!(close(hi, -0.6125861413986453, 1e-9), "{hi}");
        assert!(close(b.p_value.unwrap(), 0.0035922062234841775, 1e-12));
        assert!(
            t.rows["lora"].vs_best.is_none(),
            "the best is not compared with itself"
        );
        let f = csv_fields(&t, "lora");
        assert_eq!(f.len(), CSV_COLUMNS.len());
        assert_eq!(&f[..3], ["-1.84", "-2.53", "-1.15"]);
        assert_eq!(f[5], "0.0018");
        assert_eq!(f[6], "5");
        assert_eq!(f[7], "lora");
        assert!(f[8..].iter().all(String::is_empty));
    }

    #[test]
    fn pairs_follow_the_draw_and_small_cells_have_no_test() {
        let rows = s(&["linear", "dka"]);
        // dka has draws 0, 1, 2; linear 1, 2, 3: two pairs (draws 1 and 2).
        let values: BTreeMap<String, Vec<(u64, f64)>> = [
            ("linear", vec![(1, 60.0), (2, 62.0), (3, 99.0)]),
            ("dka", vec![(0, 10.0), (1, 61.0), (2, 62.5)]),
        ]
        .into_iter()
        .map(|(k, x)| (k.to_string(), x))
        .collect();
        let t = compare(&rows, &values);
        let p = t.rows["linear"].vs_dka.as_ref().unwrap();
        assert_eq!(p.n, 2);
        // d = [-1, -0.5]: mean -0.75; SciPy: interval (-3.926551, 2.426551), p = 0.204833.
        assert!(close(p.mean_diff, -0.75, 1e-12));
        let (lo, hi) = p.t_ci95.unwrap();
        assert!(close(lo, -3.9265511840436735, 1e-9) && close(hi, 2.4265511840436735, 1e-9));
        assert!(close(p.p_value.unwrap(), 0.20483276469913345, 1e-12));
        assert_eq!(t.indistinguishable("linear"), Some(true));
        let one: BTreeMap<String, Vec<(u64, f64)>> =
            [("linear", vec![(0, 60.0)]), ("dka", vec![(0, 61.0)])]
                .into_iter()
                .map(|(k, x)| (k.to_string(), x))
                .collect();
        let t = compare(&rows, &one);
        assert_eq!(t.indistinguishable("linear"), None, "one pair: no test");
        assert_eq!(csv_fields(&t, "linear")[0], "-1.00");
        assert_eq!(csv_fields(&t, "linear")[1], "");
    }

    #[test]
    fn without_dka_every_row_is_compared_with_the_best() {
        let rows = s(&["1", "8", "32"]);
        let values: BTreeMap<String, Vec<(u64, f64)>> = [
            ("1", vec![(0, 60.0), (1, 64.0)]),
            ("8", vec![(0, 70.0), (1, 71.0)]),
        ]
        .into_iter()
        .map(|(k, x)| (k.to_string(), x))
        .collect();
        let t = compare(&rows, &values);
        assert_eq!((t.dka.as_deref(), t.best.as_deref()), (None, Some("8")));
        assert!(t.rows["1"].vs_dka.is_none());
        assert_eq!(t.rows["1"].vs_best.as_ref().unwrap().mean_diff, -8.5);
        assert_eq!(
            t.indistinguishable("8"),
            None,
            "the best row has no reference"
        );
        assert!(!t.rows.contains_key("32"));
        assert_eq!(format_p(0.00001234), "1.2e-5");
        assert_eq!(format_p(0.5), "0.5000");
    }
}
