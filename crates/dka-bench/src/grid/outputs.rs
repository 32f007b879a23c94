//! What a grid leaves besides its runs: `table.csv` and `table.md` ([`crate::report::table`]),
//! the figure ([`crate::report::plots`]) and `experiment.json`, from the records of the grid's
//! current runs. Titles say what ran (datasets, fractions, backbones, weights, draws, from the
//! runs themselves); the experiment's own title, which names the paper's setting, is a
//! subtitle.
use super::experiment::ExperimentOptions;
use crate::config::experiment::{Experiment, Profile};
use crate::config::metrics::{metric_names, SEGMENTATION};
use crate::config::record::RunRecord;
use crate::config::run::RunConfig;
use crate::config::spec::RunSpec;
use crate::report::table::{aggregate, PaperTable, TableSpec};
use crate::report::titles::RunsShown;
use crate::util::fs::write_atomic;
use std::collections::HashMap;
use std::path::Path;

/// The values an axis takes, in grid order.
fn axis_order(specs: &[RunSpec], axis: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for s in specs {
        if let Some(v) = s.axes.get(axis) {
            if !seen.contains(v) {
                seen.push(v.clone());
            }
        }
    }
    seen
}

/// What the current runs are, from their configs and records.
fn runs_shown(specs: &[RunSpec], current: &[&RunRecord]) -> RunsShown {
    let configs: HashMap<&str, RunConfig> = specs
        .iter()
        .filter_map(|s| {
            Some((
                s.id.as_str(),
                serde_json::from_value(s.config.clone()).ok()?,
            ))
        })
        .collect();
    let mut shown = RunsShown::default();
    for r in current {
        if let Some(c) = configs.get(r.id.as_str()) {
            shown.add_run(&c.dataset, &c.fraction, &c.backbone, c.draw);
        }
        if let Some(w) = r.info.get("weights") {
            shown.add_weights(w);
        }
    }
    shown
}

/// `table.csv`, `table.md`, the figure and `experiment.json` of the grid's current runs.
pub fn write_outputs(
    o: &ExperimentOptions,
    exp: &Experiment,
    prof: &Profile,
    specs: &[RunSpec],
    out: &Path,
    current: &[&RunRecord],
    left_out: usize,
) -> anyhow::Result<()> {
    let paper = exp
        .paper
        .as_ref()
        .map(|f| {
            PaperTable::load(
                &o.experiment
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("paper")
                    .join(f),
                &exp.paper_rows,
            )
        })
        .transpose()?;
    let segmentation = SEGMENTATION.contains(&exp.metric.as_str());
    let extra: Vec<String> = if exp.metric == "primary" {
        Vec::new()
    } else {
        metric_names(segmentation)
            .iter()
            .filter(|m| **m != exp.metric)
            .map(|m| m.to_string())
            .collect()
    };
    let mut notes = Vec::new();
    if let Some(n) = &prof.note {
        notes.push(n.clone());
    }
    // The experiment's notes describe the paper's data; a small (CPU) profile runs on other
    // data and says so in its own note.
    if !prof.cpu || o.profile.is_none() {
        notes.extend(exp.notes.iter().cloned());
    }
    let shown = runs_shown(specs, current);
    let title = shown.title(&exp.metric);
    let subtitle = format!("The paper's setting: {}", exp.title);
    let table = TableSpec {
        title: title.clone(),
        subtitle: Some(subtitle.clone()),
        metric: exp.metric.clone(),
        extra,
        row_axis: exp.rows.clone(),
        row_order: axis_order(specs, &exp.rows),
        col_axes: exp.columns.clone(),
        col_orders: exp.columns.iter().map(|c| axis_order(specs, c)).collect(),
        paper: paper.as_ref(),
        notes,
        profile: o.profile.clone(),
    };
    aggregate(out, &table, current, left_out)?;
    crate::report::plots::plot(
        out,
        &crate::config::figure::FigureSpec {
            kind: exp.plot,
            title,
            subtitle: Some(subtitle),
            metric: exp.metric.clone(),
            row_axis: exp.rows.clone(),
            col_axes: exp.columns.clone(),
        },
    )?;
    write_atomic(
        &out.join("experiment.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "experiment": o.experiment, "profile": o.profile, "title": exp.title, "metric": exp.metric,
            "runs": specs.len(), "machine": crate::util::provenance::machine(),
        }))?
        .as_bytes(),
    )?;
    Ok(())
}
