//! Figures from a grid's `table.csv` (PNG, for papers and slides): `lines` (a metric against
//! the last column axis, e.g. the data-size curve, one line per row value with ± std bars),
//! `heatmap` (row axis × one column axis, e.g. learning rates or kernel sizes) and `bars`
//! (grouped bars, one group per column combination). Text uses DejaVu Sans from the system's
//! fonts; without it the figure is skipped with a warning (the CSV and Markdown tables stay).
use anyhow::Context;
use plotters::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    #[default]
    Bars,
    Lines,
    Heatmap,
}

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        FONT_FILES.iter().any(|f| {
            std::fs::read(f)
                .ok()
                .map(|b| {
                    plotters::style::register_font(
                        "sans-serif",
                        FontStyle::Normal,
                        Box::leak(b.into_boxed_slice()),
                    )
                    .is_ok()
                })
                .unwrap_or(false)
        })
    })
}

/// One cell of table.csv.
struct Cell {
    row: String,
    cols: Vec<String>,
    mean: f64,
    std: f64,
}

fn read(table: &Path, n_cols: usize) -> anyhow::Result<Vec<Cell>> {
    let mut r = csv::Reader::from_path(table).with_context(|| table.display().to_string())?;
    let mut cells = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        cells.push(Cell {
            row: rec[0].to_string(),
            cols: (1..=n_cols).map(|i| rec[i].to_string()).collect(),
            mean: rec[n_cols + 1].parse()?,
            std: rec[n_cols + 2].parse()?,
        });
    }
    Ok(cells)
}

fn order(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in values {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// A label as a number: "1.25%" -> 1.25, "1e-3" -> 0.001.
fn numeric(s: &str) -> Option<f64> {
    s.trim_end_matches('%').parse().ok()
}

/// Writes `out/figure.png` from `out/table.csv`.
pub fn plot(
    out: &Path,
    kind: PlotKind,
    title: &str,
    metric: &str,
    row_axis: &str,
    col_axes: &[String],
) -> anyhow::Result<()> {
    if !register_font() {
        tracing::warn!(
            "no DejaVu Sans font found ({}); skipping figure.png",
            FONT_FILES.join(", ")
        );
        return Ok(());
    }
    let cells = read(&out.join("table.csv"), col_axes.len())?;
    if cells.is_empty() {
        return Ok(());
    }
    let path = out.join("figure.png");
    let root = BitMapBackend::new(&path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let rows = order(cells.iter().map(|c| c.row.clone()));
    let lo = cells
        .iter()
        .map(|c| c.mean - c.std)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = cells
        .iter()
        .map(|c| c.mean + c.std)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(1.0)
        * 1.05;
    let ylabel = format!("{metric} (%)");
    match kind {
        PlotKind::Lines => {
            // Panels: combinations of all column axes but the last; x: the last one.
            let panels = order(cells.iter().map(|c| c.cols[..c.cols.len() - 1].join(" ")));
            let areas = root.split_evenly((1, panels.len().max(1)));
            for (panel, area) in panels.iter().zip(areas) {
                let pc: Vec<&Cell> = cells
                    .iter()
                    .filter(|c| &c.cols[..c.cols.len() - 1].join(" ") == panel)
                    .collect();
                let xs: Vec<f64> = pc.iter().filter_map(|c| numeric(c.cols.last()?)).collect();
                let (x0, x1) = (
                    xs.iter().cloned().fold(f64::INFINITY, f64::min),
                    xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                );
                let mut ch = ChartBuilder::on(&area)
                    .caption(panel, ("sans-serif", 16))
                    .margin(12)
                    .x_label_area_size(40)
                    .y_label_area_size(50)
                    .build_cartesian_2d(
                        (x0.max(1e-6)..x1.max(x0 * 1.01 + 1e-6)).log_scale(),
                        lo..hi,
                    )?;
                ch.configure_mesh()
                    .x_desc(col_axes.last().map(String::as_str).unwrap_or(""))
                    .y_desc(&ylabel)
                    .draw()?;
                for (i, row) in rows.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let mut pts: Vec<(f64, f64, f64)> = pc
                        .iter()
                        .filter(|c| &c.row == row)
                        .filter_map(|c| Some((numeric(c.cols.last()?)?, c.mean, c.std)))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    ch.draw_series(LineSeries::new(
                        pts.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(2),
                    ))?
                    .label(row)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
                    ch.draw_series(pts.iter().map(|p| {
                        ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 6)
                    }))?;
                }
                ch.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        PlotKind::Heatmap => {
            let cols = order(cells.iter().map(|c| c.cols.join(" ")));
            let vals: BTreeMap<(usize, usize), f64> = cells
                .iter()
                .filter_map(|c| {
                    Some((
                        (
                            rows.iter().position(|r| r == &c.row)?,
                            cols.iter().position(|x| x == &c.cols.join(" "))?,
                        ),
                        c.mean,
                    ))
                })
                .collect();
            let (vmin, vmax) = vals
                .values()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let centre = |v: f64, names: &[String]| {
                if (v - v.floor() - 0.5).abs() < 1e-6 {
                    names.get(v.floor() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            let mut ch = ChartBuilder::on(&root)
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(90)
                .build_cartesian_2d(0f64..cols.len() as f64, 0f64..rows.len() as f64)?;
            ch.configure_mesh()
                .disable_mesh()
                .x_desc(col_axes.join(" "))
                .y_desc(row_axis)
                .x_labels(4 * cols.len())
                .y_labels(4 * rows.len())
                .x_label_formatter(&|v| centre(*v, &cols))
                .y_label_formatter(&|v| centre(*v, &rows))
                .draw()?;
            ch.draw_series(vals.iter().map(|(&(r, c), &v)| {
                let t = if vmax > vmin {
                    (v - vmin) / (vmax - vmin)
                } else {
                    0.5
                };
                let color = RGBColor(
                    (255.0 * t) as u8,
                    (80.0 + 100.0 * t) as u8,
                    (255.0 * (1.0 - t)) as u8,
                );
                Rectangle::new(
                    [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                    color.filled(),
                )
            }))?;
            ch.draw_series(vals.iter().map(|(&(r, c), &v)| {
                Text::new(
                    format!("{v:.1}"),
                    (c as f64 + 0.45, r as f64 + 0.5),
                    ("sans-serif", 16).into_font().color(&BLACK),
                )
            }))?;
        }
        PlotKind::Bars => {
            let cols = order(cells.iter().map(|c| c.cols.join(" ")));
            let per = rows.len() as f64 + 1.0;
            let mut ch = ChartBuilder::on(&root)
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..cols.len() as f64, lo..hi)?;
            ch.configure_mesh()
                .disable_x_mesh()
                .y_desc(&ylabel)
                .x_labels(4 * cols.len().max(1))
                .x_label_formatter(&|x| {
                    // One label at the centre of each group.
                    if (x - x.floor() - 0.5).abs() < 1e-6 {
                        cols.get(x.floor() as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .draw()?;
            for (i, row) in rows.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let bars: Vec<(f64, f64, f64)> = cells
                    .iter()
                    .filter(|c| &c.row == row)
                    .filter_map(|c| {
                        Some((
                            cols.iter().position(|x| x == &c.cols.join(" "))? as f64
                                + (i as f64 + 0.5) / per,
                            c.mean,
                            c.std,
                        ))
                    })
                    .collect();
                let w = 0.45 / per;
                ch.draw_series(
                    bars.iter().map(|&(x, m, _)| {
                        Rectangle::new([(x - w, 0.0), (x + w, m)], color.filled())
                    }),
                )?
                .label(row)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
                ch.draw_series(bars.iter().map(|&(x, m, s)| {
                    ErrorBar::new_vertical(x, m - s, m, m + s, BLACK.filled(), 4)
                }))?;
            }
            ch.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present().with_context(|| path.display().to_string())?;
    Ok(())
}
