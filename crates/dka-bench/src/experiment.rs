//! Experiments: TOML files in `experiments/`, each a grid over [`RunConfig`] fields.
//!
//! ```toml
//! name = "table2-classification"
//! title = "Table 2: natural-pretrained ViT-B/16, classification accuracy (%)"
//! metric = "accuracy"            # reported in the table
//! rows = "method"                # table rows: one grid axis
//! columns = ["dataset", "fraction"]
//! paper = "table2_classification_acc.csv"   # the paper's numbers (shared/paper), optional
//!
//! [base]                         # RunConfig fields shared by every run
//! backbone = "vit_base_patch16_224"
//! method = { name = "dka" }
//!
//! [grid]                         # axes: a dotted RunConfig path = list of values
//! method = [{ name = "full" }, { name = "dka", label = "DKA" }]
//! dataset = ["covid", "busi-cls"]
//! "method.d_hat" = [8, 16]       # nested fields work too
//!
//! [profiles.quick.base]          # `--profile quick`: overrides of base and grid
//! epochs = 2
//! ```
//! A table value on an axis replaces the field; `label` (removed before use) names it in
//! tables, else `name`, else the value itself. Every cell is parsed into a `RunConfig`
//! (unknown fields are errors) before any run starts.
use crate::grid::RunSpec;
use crate::run_config::RunConfig;
use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub base: toml::Table,
    #[serde(default)]
    pub grid: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    pub title: String,
    pub metric: String,
    pub rows: String,
    pub columns: Vec<String>,
    /// File name under shared/paper/ with the paper's numbers for this table.
    pub paper: Option<String>,
    /// Column of that file that names the rows (`method`, `d_hat`, `variant`).
    #[serde(default = "default_paper_rows")]
    pub paper_rows: String,
    /// Figure drawn from the table (`bars`, `lines`, `heatmap`).
    #[serde(default)]
    pub plot: crate::plot::PlotKind,
    #[serde(default)]
    pub base: toml::Table,
    pub grid: toml::Table,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

fn default_paper_rows() -> String {
    "method".into()
}

fn json(v: &toml::Value) -> Value {
    serde_json::to_value(v).expect("TOML values are JSON values")
}

/// Sets `path` (dotted) in a JSON object, creating objects on the way.
fn set_path(root: &mut Value, path: &str, v: Value) -> anyhow::Result<()> {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .context("not an object")?
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    cur.as_object_mut()
        .with_context(|| format!("{path}: parent is not a table"))?
        .insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// An axis value without its `label`, and the label.
fn labelled(v: &toml::Value) -> (Value, String) {
    let mut j = json(v);
    let label = match j.as_object_mut() {
        Some(o) => o
            .remove("label")
            .and_then(|l| l.as_str().map(str::to_owned))
            .or_else(|| o.get("name").and_then(|n| n.as_str().map(str::to_owned)))
            .unwrap_or_else(|| v.to_string()),
        None => match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    };
    (j, label)
}

impl Experiment {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        toml::from_str(&text).with_context(|| format!("{}: not a valid experiment", path.display()))
    }

    /// Every run of the grid (under `profile`), each already checked as a [`RunConfig`].
    pub fn runs(&self, profile: Option<&str>) -> anyhow::Result<Vec<RunSpec>> {
        let mut base = self.base.clone();
        let mut grid = self.grid.clone();
        if let Some(p) = profile {
            let Some(prof) = self.profiles.get(p) else {
                bail!(
                    "experiment {} has no profile '{p}' (has: {})",
                    self.name,
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            base.extend(prof.base.clone());
            grid.extend(prof.grid.clone());
        }
        for axis in std::iter::once(&self.rows).chain(&self.columns) {
            if !grid.contains_key(axis) {
                bail!(
                    "experiment {}: table axis '{axis}' is not a grid axis",
                    self.name
                );
            }
        }
        let axes: Vec<(String, Vec<(Value, String)>)> = grid
            .iter()
            .map(|(k, v)| match v {
                toml::Value::Array(a) if !a.is_empty() => {
                    Ok((k.clone(), a.iter().map(labelled).collect()))
                }
                _ => bail!(
                    "experiment {}: grid axis '{k}' must be a non-empty list",
                    self.name
                ),
            })
            .collect::<anyhow::Result<_>>()?;
        let base = json(&toml::Value::Table(base));
        let mut cells: Vec<(Value, BTreeMap<String, String>)> = vec![(base, BTreeMap::new())];
        for (axis, values) in &axes {
            let mut next = Vec::with_capacity(cells.len() * values.len());
            for (cfg, labels) in &cells {
                for (v, label) in values {
                    let (mut cfg, mut labels) = (cfg.clone(), labels.clone());
                    set_path(&mut cfg, axis, v.clone())?;
                    labels.insert(axis.clone(), label.clone());
                    next.push((cfg, labels));
                }
            }
            cells = next;
        }
        cells
            .into_iter()
            .map(|(cfg, labels)| {
                let rc: RunConfig = serde_json::from_value(cfg.clone())
                    .with_context(|| format!("experiment {}: run {labels:?}", self.name))?;
                rc.validate()
                    .with_context(|| format!("experiment {}: run {labels:?}", self.name))?;
                Ok(RunSpec::new(labels, serde_json::to_value(&rc)?))
            })
            .collect()
    }
}
