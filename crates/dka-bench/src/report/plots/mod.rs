//! Figures, drawn from CSVs alone: each grid's `table.csv` / `runs.csv` (and `figure.json`,
//! which says which figure the grid gets), and each ERF folder's `area_ratios.csv` +
//! `erf.safetensors`. One file per figure, each with a pure `data(...)` step (from rows read by
//! column name, [`tables`]) and a drawing step (a [`style::Figure`], written as PNG at 300 dpi
//! and SVG); [`style`] holds the shared look, [`parts`] the shared drawing pieces.
//!
//! | kind (`plot` in an experiment) | figure | file |
//! |---|---|---|
//! | `bars` (default) | Tables 1–3, demo: grouped bars, the paper's numbers beside ours | [`table_bars`] |
//! | `gain` | Figure 1: gain over linear probing vs training-data fraction | [`fig1_gain`] |
//! | — (`dka erf`) | Figures 2 and 6: ERF maps, methods × fractions | [`fig2_erf`] |
//! | `params` | Figure 5: score vs trainable parameters | [`fig5_params`] |
//! | `heatmap` | Figure 7: adapter × head learning rates | [`fig7_lr`] |
//! | `kernels` | Figure 8: large × small kernel sizes | [`fig8_kernels`] |
//! | `branches` | Figure 9: large only / small only / both | [`fig9_branches`] |
//! | — (`dka plots --run`) | one run's loss and metric per epoch, `RUN/curves.png` | [`curves`] |
//!
//! Without DejaVu Sans a figure is skipped with a warning; tables and CSVs are unaffected.
pub mod curves;
pub mod fig1_gain;
pub mod fig2_erf;
pub mod fig5_params;
pub mod fig7_lr;
pub mod fig8_kernels;
pub mod fig9_branches;
pub mod parts;
pub mod style;
pub mod table_bars;
pub mod tables;

use crate::config::figure::{FigureSpec, PlotKind};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The grid's figure: writes `out/figure.json` (`spec`), then `out/figure.png` and
/// `out/figure.svg` from `out/table.csv` and `out/runs.csv`.
pub fn plot(out: &Path, spec: &FigureSpec) -> anyhow::Result<()> {
    crate::util::fs::write_atomic(
        &out.join("figure.json"),
        serde_json::to_string_pretty(spec)?.as_bytes(),
    )?;
    draw_grid(out, spec)?;
    Ok(())
}

/// Draws a grid's figure (`out/figure.png` + `.svg`) from its CSVs; `None` when skipped (no
/// font, or no cell to show).
pub fn draw_grid(out: &Path, spec: &FigureSpec) -> anyhow::Result<Option<PathBuf>> {
    if !style::font_available() {
        tracing::warn!("{}", style::no_font_warning("figure.png"));
        return Ok(None);
    }
    let full_title = match &spec.subtitle {
        Some(s) => format!("{}\n{s}", spec.title),
        None => spec.title.clone(),
    };
    let title = full_title.as_str();
    let (row, cols, metric) = (&spec.row_axis, &spec.col_axes, &spec.metric);
    let cells = tables::read_table(&out.join("table.csv"), row, cols)?;
    if cells.is_empty() {
        return Ok(None);
    }
    let runs = || -> anyhow::Result<Vec<tables::Run>> {
        let path = out.join("runs.csv");
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let mut axes = vec![row.clone()];
        axes.extend(cols.iter().cloned());
        axes.push("draw".into());
        tables::read_runs(&path, &axes, metric)
    };
    let stem = out.join("figure");
    let png = match spec.kind {
        PlotKind::Bars => {
            let d = table_bars::data(&cells, cols, metric);
            style::save(&table_bars::Draw { data: &d, title }, &stem)?
        }
        PlotKind::Gain => {
            let d = fig1_gain::data(&cells, &runs()?, row, cols, metric)?;
            style::save(&fig1_gain::Draw { data: &d, title }, &stem)?
        }
        PlotKind::Params => {
            let d = fig5_params::data(&cells, &runs()?, row, cols, metric);
            style::save(&fig5_params::Draw { data: &d, title }, &stem)?
        }
        PlotKind::Heatmap => {
            let d = fig7_lr::data(&cells, row, cols, metric);
            style::save(&fig7_lr::figure(&d, title), &stem)?
        }
        PlotKind::Kernels => {
            let d = fig8_kernels::data(&cells, row, cols, metric);
            style::save(&fig8_kernels::figure(&d, title), &stem)?
        }
        PlotKind::Branches => {
            let d = fig9_branches::data(&cells, cols, metric);
            style::save(&fig9_branches::Draw { data: &d, title }, &stem)?
        }
    };
    Ok(Some(png))
}

/// Draws an ERF folder's map grid (`dir/erf_grid.png` + `.svg`) from its `area_ratios.csv`
/// and maps; `None` when skipped for want of a font.
pub fn draw_erf_grid(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !style::font_available() {
        tracing::warn!("{}", style::no_font_warning("erf_grid.png"));
        return Ok(None);
    }
    let (rows, scores) = fig2_erf::load(dir)?;
    let d = fig2_erf::data(&rows, &scores);
    let title = format!(
        "Figures 2 and 6: effective receptive fields, {} on {} test images",
        short_name(&d.backbone),
        style::dataset_label(&d.dataset)
    );
    let png = style::save(
        &fig2_erf::Draw {
            data: &d,
            title: &title,
            change_scale: None,
        },
        &dir.join("erf_grid"),
    )?;
    // With maps at initialisation: what training changed, and the mass beyond each radius.
    let mass = fig2_erf::mass_rows(&rows, &scores);
    let mut w = csv::Writer::from_path(dir.join("erf_mass.csv"))?;
    for r in &mass {
        w.serialize(r)?;
    }
    w.flush()?;
    if let Some((c, scale)) = fig2_erf::change_data(&rows, &scores) {
        let title = format!(
            "ERF change with training (trained − initial), {} on {} test images",
            short_name(&c.backbone),
            style::dataset_label(&c.dataset)
        );
        style::save(
            &fig2_erf::Draw {
                data: &c,
                title: &title,
                change_scale: Some(scale),
            },
            &dir.join("erf_change"),
        )?;
    }
    Ok(Some(png))
}

/// A backbone spec as a short name: a JSON config's folder (`.assets/dinov2/config.json` ->
/// `dinov2`) or file stem, else the preset name.
pub fn short_name(backbone: &str) -> String {
    let p = Path::new(backbone);
    if p.extension().is_some_and(|e| e == "json") {
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_string());
        return match stem.as_deref() {
            Some("config") => p
                .parent()
                .and_then(|d| d.file_name())
                .map(|d| d.to_string_lossy().to_string())
                .unwrap_or_else(|| backbone.to_string()),
            Some(s) => s.to_string(),
            None => backbone.to_string(),
        };
    }
    backbone.to_string()
}

/// The figure spec of a grid folder written before `figure.json` existed: the experiment file
/// named in `experiment.json` decides the kind, `table.csv`'s header the axes.
fn spec_from_experiment(dir: &Path) -> anyhow::Result<FigureSpec> {
    let path = dir.join("experiment.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
    )
    .with_context(|| path.display().to_string())?;
    let exp_file = v["experiment"]
        .as_str()
        .with_context(|| format!("{}: no `experiment`", path.display()))?;
    let exp = crate::config::experiment::Experiment::load(Path::new(exp_file))?;
    let (row_axis, col_axes) = tables::table_axes(&dir.join("table.csv"))?;
    Ok(FigureSpec {
        kind: exp.plot,
        title: v["title"].as_str().unwrap_or(&exp.title).to_string(),
        subtitle: None,
        metric: v["metric"].as_str().unwrap_or(&exp.metric).to_string(),
        row_axis,
        col_axes,
    })
}

/// Every folder under `results` (three levels deep; run folders skipped) that holds a grid's
/// `table.csv` or an ERF folder's `area_ratios.csv`.
fn figure_folders(results: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(results.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if dir.join("table.csv").is_file() || dir.join("area_ratios.csv").is_file() {
            found.push(dir.clone());
        }
        if depth >= 3 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() && !name.starts_with('.') && name != "runs" {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Redraws every figure under `results` from its CSVs; returns the PNGs written. A folder
/// whose figure cannot be drawn is reported and the rest continue; the error names them all.
pub fn redraw(results: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for dir in figure_folders(results) {
        let r = if dir.join("area_ratios.csv").is_file() {
            draw_erf_grid(&dir)
        } else {
            let spec_path = dir.join("figure.json");
            let spec = if spec_path.is_file() {
                std::fs::read_to_string(&spec_path)
                    .map_err(anyhow::Error::from)
                    .and_then(|t| Ok(serde_json::from_str::<FigureSpec>(&t)?))
                    .with_context(|| spec_path.display().to_string())
            } else {
                spec_from_experiment(&dir)
            };
            spec.and_then(|s| draw_grid(&dir, &s))
        };
        match r {
            Ok(Some(p)) => written.push(p),
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{}: {e:#}", dir.display());
                failed.push(dir.display().to_string());
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} folder(s) had figures that could not be drawn: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(written)
}
