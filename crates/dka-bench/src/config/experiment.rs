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
//! [profiles.quick]               # `--profile quick`: flags, and overrides of base and grid
//! cpu = true                     # small enough for the CPU (other profiles refuse it)
//! random_weights = true          # may run without --weights
//! [profiles.quick.base]          # replaces base's keys; a dotted key sets one nested field
//! epochs = 2
//! "optimizer.head_lr" = 1e-3
//! ```
//! A table value on an axis replaces the field; `label` (removed before use) names it in
//! tables, else `name`, else the value itself. Two more keys are removed before use: `value`
//! (the axis value, when it is not itself a table: `{ value = "busi-seg", with = {...} }`) and
//! `with`, a table of dotted `RunConfig` paths set for the runs that take this value
//! (`{ name = "full", with = { "optimizer.backbone_lr" = 1e-5 } }`), applied after every
//! axis. Every cell is parsed into a `RunConfig` (unknown fields are errors) before any run
//! starts.
use crate::config::run::RunConfig;
use crate::config::spec::RunSpec;
use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Small enough to run on the CPU; a grid of any other profile refuses the CPU unless
    /// `--device cpu` is given.
    #[serde(default)]
    pub cpu: bool,
    /// May run without `--weights` (random initialisation); other profiles need weights or
    /// an explicit `--weights none`.
    #[serde(default)]
    pub random_weights: bool,
    /// A note for the table (e.g. what the profile changes).
    #[serde(default)]
    pub note: Option<String>,
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
    /// The figure drawn from the table (`bars`, `gain`, `params`, `heatmap`, `kernels`,
    /// `branches`: see `plots`).
    #[serde(default)]
    pub plot: super::figure::PlotKind,
    /// Notes printed under the table: the data choices a reader needs.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The experiment as written is small enough for the CPU (the demo).
    #[serde(default)]
    pub cpu: bool,
    #[serde(default)]
    pub base: toml::Table,
    pub grid: toml::Table,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The file it was read from (set by [`Experiment::load`]), named in its errors.
    #[serde(skip)]
    pub source: std::path::PathBuf,
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
            .with_context(|| format!("`{path}`: a part before `{p}` is not a table"))?
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    cur.as_object_mut()
        .with_context(|| format!("`{path}`: its parent is not a table"))?
        .insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// One value of an axis: what the field is set to, its label, and the `with` settings.
#[derive(Debug, Clone)]
struct AxisValue {
    value: Value,
    label: String,
    with: Vec<(String, Value)>,
}

fn scalar_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An axis value without its `label`, `value` and `with` keys, and those.
fn labelled(v: &toml::Value) -> AxisValue {
    let mut j = json(v);
    let Some(o) = j.as_object_mut() else {
        return AxisValue {
            label: scalar_label(&j),
            value: j,
            with: Vec::new(),
        };
    };
    let label = o
        .remove("label")
        .and_then(|l| l.as_str().map(str::to_owned));
    let with: Vec<(String, Value)> = match o.remove("with") {
        Some(Value::Object(w)) => w.into_iter().collect(),
        _ => Vec::new(),
    };
    let value = o
        .remove("value")
        .unwrap_or_else(|| Value::Object(o.clone()));
    let label = label
        .or_else(|| {
            value
                .get("name")
                .and_then(|n| n.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| match &value {
            Value::Object(_) => v.to_string(),
            other => scalar_label(other),
        });
    AxisValue { value, label, with }
}

impl Experiment {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let mut exp: Self = toml::from_str(&text)
            .with_context(|| format!("{}: not a valid experiment", path.display()))?;
        exp.source = path.to_path_buf();
        Ok(exp)
    }

    /// How errors name the experiment: its file, when it was read from one, and its name.
    fn label(&self) -> String {
        if self.source.as_os_str().is_empty() {
            format!("experiment {}", self.name)
        } else {
            format!("{} (experiment {})", self.source.display(), self.name)
        }
    }

    /// The profile called `name` (`None`: the experiment as written, the default profile).
    pub fn profile(&self, name: Option<&str>) -> anyhow::Result<Profile> {
        match name {
            None => Ok(Profile {
                cpu: self.cpu,
                ..Profile::default()
            }),
            Some(p) => self.profiles.get(p).cloned().with_context(|| {
                format!(
                    "{} has no profile '{p}' (has: {})",
                    self.label(),
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }

    /// Every run of the grid (under `profile`), each already checked as a [`RunConfig`].
    pub fn runs(&self, profile: Option<&str>) -> anyhow::Result<Vec<RunSpec>> {
        let mut base = self.base.clone();
        let mut grid = self.grid.clone();
        let prof = self.profile(profile)?;
        base.extend(prof.base.clone());
        grid.extend(prof.grid.clone());
        for axis in std::iter::once(&self.rows).chain(&self.columns) {
            if !grid.contains_key(axis) {
                bail!("{}: table axis '{axis}' is not a grid axis", self.label());
            }
        }
        let axes: Vec<(String, Vec<AxisValue>)> = grid
            .iter()
            .map(|(k, v)| match v {
                toml::Value::Array(a) if !a.is_empty() => {
                    Ok((k.clone(), a.iter().map(labelled).collect()))
                }
                _ => bail!("{}: grid axis '{k}' must be a non-empty list", self.label()),
            })
            .collect::<anyhow::Result<_>>()?;
        // Dotted keys in `base` (`"optimizer.head_lr" = 1e-3`) set one nested field.
        let (dotted, plain): (toml::Table, toml::Table) =
            base.into_iter().partition(|(k, _)| k.contains('.'));
        let mut base = json(&toml::Value::Table(plain));
        for (k, v) in dotted {
            set_path(&mut base, &k, json(&v)).with_context(|| format!("{}: base", self.label()))?;
        }
        type Cell = (Value, BTreeMap<String, String>, Vec<(String, Value)>);
        let mut cells: Vec<Cell> = vec![(base, BTreeMap::new(), Vec::new())];
        for (axis, values) in &axes {
            let mut next = Vec::with_capacity(cells.len() * values.len());
            for (cfg, labels, with) in &cells {
                for v in values {
                    let (mut cfg, mut labels, mut with) =
                        (cfg.clone(), labels.clone(), with.clone());
                    set_path(&mut cfg, axis, v.value.clone())
                        .with_context(|| format!("{}: grid axis", self.label()))?;
                    labels.insert(axis.clone(), v.label.clone());
                    with.extend(v.with.iter().cloned());
                    next.push((cfg, labels, with));
                }
            }
            cells = next;
        }
        cells
            .into_iter()
            .map(|(mut cfg, labels, with)| {
                for (path, v) in with {
                    set_path(&mut cfg, &path, v)
                        .with_context(|| format!("{}: `with` {path}", self.label()))?;
                }
                let rc: RunConfig = serde_json::from_value(cfg.clone())
                    .with_context(|| format!("{}: run {labels:?}", self.label()))?;
                rc.validate()
                    .with_context(|| format!("{}: run {labels:?}", self.label()))?;
                Ok(RunSpec::new(labels, serde_json::to_value(&rc)?))
            })
            .collect::<anyhow::Result<Vec<RunSpec>>>()
            .and_then(|specs| self.distinct(specs))
    }

    /// Refuses a grid with two identical runs (same config, so the same id).
    fn distinct(&self, specs: Vec<RunSpec>) -> anyhow::Result<Vec<RunSpec>> {
        let mut seen: BTreeMap<&str, &BTreeMap<String, String>> = BTreeMap::new();
        for s in &specs {
            if let Some(first) = seen.insert(&s.id, &s.axes) {
                bail!(
                    "{}: the grid has two identical runs ({first:?} and {:?}); remove the \
                     duplicate axis values",
                    self.label(),
                    s.axes
                );
            }
        }
        Ok(specs)
    }
}
