//! A grid's CSVs as figures read them: by column name, through serde row types, never by
//! position. `table.csv` gives one [`Cell`] per table cell (mean ± std over draws, the paper's
//! number); `runs.csv` one [`Run`] per finished run (its axes, metrics, trainable parameters).
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The statistics of a `table.csv` row (other columns are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CellStats {
    /// Mean over draws, in percent.
    pub mean: f64,
    /// Sample standard deviation over draws (0 for one draw).
    pub std: f64,
    pub n: usize,
    #[serde(default)]
    pub failed: usize,
    /// The paper's number (percent), where it has one.
    #[serde(default)]
    pub paper: Option<f64>,
    pub metric: String,
}

/// One cell of a grid's table: the row value, the column axes' values, its statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub row: String,
    pub cols: Vec<String>,
    pub stats: CellStats,
}

/// The fixed columns of a `runs.csv` row that figures use.
#[derive(Debug, Clone, Deserialize)]
pub struct RunFields {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub trainable_params: Option<f64>,
    /// A JSON object (backbone, weights, selection, ...).
    #[serde(default)]
    pub info: String,
    #[serde(default)]
    pub finished_utc: String,
}

/// One finished run: its fixed fields, its axis values (by axis name) and its metric.
#[derive(Debug, Clone)]
pub struct Run {
    pub fields: RunFields,
    pub axes: BTreeMap<String, String>,
    /// The figure's metric as a fraction (None: missing or not finite).
    pub metric: Option<f64>,
}

impl Run {
    pub fn info(&self, key: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.fields.info).ok()?;
        v.get(key)?.as_str().map(str::to_owned)
    }

    /// The run's draw index (axis `draw`), if it has one.
    pub fn draw(&self) -> Option<u64> {
        self.axes.get("draw")?.parse().ok()
    }
}

fn column(headers: &csv::StringRecord, name: &str, path: &Path) -> anyhow::Result<usize> {
    headers
        .iter()
        .position(|h| h == name)
        .with_context(|| format!("{}: no column '{name}'", path.display()))
}

/// The axes of a `table.csv`: its first column (the row axis) and the columns before `mean`.
pub fn table_axes(path: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let mut r = csv::Reader::from_path(path).with_context(|| path.display().to_string())?;
    let h = r.headers()?.clone();
    let mean = column(&h, "mean", path)?;
    anyhow::ensure!(mean >= 1, "{}: no row axis before 'mean'", path.display());
    Ok((
        h[0].to_string(),
        h.iter().take(mean).skip(1).map(str::to_owned).collect(),
    ))
}

/// Every cell of `table.csv` (`row_axis` and `col_axes` name its axis columns).
pub fn read_table(path: &Path, row_axis: &str, col_axes: &[String]) -> anyhow::Result<Vec<Cell>> {
    let mut r = csv::Reader::from_path(path).with_context(|| path.display().to_string())?;
    let h = r.headers()?.clone();
    let rc = column(&h, row_axis, path)?;
    let cc: Vec<usize> = col_axes
        .iter()
        .map(|c| column(&h, c, path))
        .collect::<anyhow::Result<_>>()?;
    let mut cells = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let stats: CellStats = rec
            .deserialize(Some(&h))
            .with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        cells.push(Cell {
            row: rec[rc].to_string(),
            cols: cc.iter().map(|&c| rec[c].to_string()).collect(),
            stats,
        });
    }
    Ok(cells)
}

/// The finished (`ok`) runs of `runs.csv` with their values of `axes` and of `metric`. When
/// several runs share every axis value (older runs of the folder with other settings), the
/// latest to finish is kept: the one the current table counts.
pub fn read_runs(path: &Path, axes: &[String], metric: &str) -> anyhow::Result<Vec<Run>> {
    let mut r = csv::Reader::from_path(path).with_context(|| path.display().to_string())?;
    let h = r.headers()?.clone();
    let ac: Vec<(String, usize)> = axes
        .iter()
        .filter_map(|a| h.iter().position(|x| x == a).map(|i| (a.clone(), i)))
        .collect();
    let mc = h.iter().position(|x| x == metric);
    let mut latest: BTreeMap<Vec<String>, Run> = BTreeMap::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let fields: RunFields = rec
            .deserialize(Some(&h))
            .with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        if fields.status != "ok" {
            continue;
        }
        let axes: BTreeMap<String, String> = ac
            .iter()
            .map(|(a, i)| (a.clone(), rec[*i].to_string()))
            .collect();
        let metric = mc
            .and_then(|c| rec[c].parse::<f64>().ok())
            .filter(|v| v.is_finite());
        let key: Vec<String> = axes.values().cloned().collect();
        let run = Run {
            fields,
            axes,
            metric,
        };
        match latest.get(&key) {
            Some(old) if old.fields.finished_utc > run.fields.finished_utc => {}
            _ => {
                latest.insert(key, run);
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// Values in first-seen order, without repeats.
pub fn order<I: IntoIterator<Item = String>>(values: I) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in values {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_read_by_column_name_whatever_the_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("table.csv");
        // Columns in an unusual order, an extra column, an empty paper number.
        std::fs::write(
            &p,
            "method,fraction,dataset,extra,metric,paper,n,std,mean,failed\n\
             dka,1.25%,busi-cls,x,accuracy,79.46,2,7.07,75.00,0\n\
             lora,1.25%,busi-cls,y,accuracy,,1,0.00,50.00,1\n",
        )
        .unwrap();
        let cols = vec!["dataset".to_string(), "fraction".to_string()];
        let cells = read_table(&p, "method", &cols).unwrap();
        assert_eq!(cells[0].row, "dka");
        assert_eq!(cells[0].cols, ["busi-cls", "1.25%"]);
        assert_eq!(cells[0].stats.mean, 75.0);
        assert_eq!(cells[0].stats.paper, Some(79.46));
        assert_eq!(cells[1].stats.paper, None);
        assert_eq!(cells[1].stats.failed, 1);
        assert!(read_table(&p, "variant", &cols).is_err());
    }

    #[test]
    fn runs_keep_the_latest_of_equal_axes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.csv");
        std::fs::write(
            &p,
            "id,status,draw,method,accuracy,trainable_params,info,error,finished_utc\n\
             a,ok,0,dka,0.5,100,\"{\"\"backbone\"\":\"\"b\"\"}\",,2026-01-01T00:00:00Z\n\
             b,ok,0,dka,0.7,100,{},,2026-01-02T00:00:00Z\n\
             c,failed,1,dka,,,{},boom,2026-01-02T00:00:00Z\n\
             d,ok,1,dka,NaN,100,{},,2026-01-02T00:00:00Z\n",
        )
        .unwrap();
        let axes = vec!["method".to_string(), "draw".to_string()];
        let runs = read_runs(&p, &axes, "accuracy").unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].fields.id, "b");
        assert_eq!(runs[0].metric, Some(0.7));
        assert_eq!(runs[0].draw(), Some(0));
        assert_eq!(runs[1].metric, None, "NaN is no value");
        assert_eq!(runs[1].fields.trainable_params, Some(100.0));
        let a = read_runs(&p, &["method".to_string()], "accuracy").unwrap();
        assert_eq!(a.len(), 1, "one key without the draw axis");
    }
}
