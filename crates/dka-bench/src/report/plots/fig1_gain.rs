//! Figure 1: the gain of each method over linear probing against the training-data fraction.
//! One line per method, x = fraction (log axis), one panel per dataset (the other column
//! axes). The gain of a draw is the method's score minus linear probing's on the same draw
//! (same split), so the error bars (± sample std over draws) are those of the paired
//! differences. A grid without a linear-probing row gets the methods' scores instead, and the
//! figure says so.
use super::parts::{self, Key, Stack};
use super::style::{self, font, Figure};
use super::tables::{order, Cell, Run};
use crate::util::stats::mean_std;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// One point: fraction (%), mean and sample std (points), number of draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gain {
    pub panels: Vec<Panel>,
    /// The fractions on the x axis (value, label).
    pub ticks: Vec<(f64, String)>,
    /// The row gains are taken against (`None`: absolute scores).
    pub baseline: Option<String>,
    pub y_label: String,
}

/// Scores (points) by (row, panel, fraction) and draw, from runs.csv.
type Draws = BTreeMap<(String, Vec<String>, String), BTreeMap<u64, f64>>;

/// The values of the column axes other than the fraction (at `fi`): a panel's key.
fn panel_of(cols: &[String], fi: usize) -> Vec<String> {
    cols.iter()
        .enumerate()
        .filter(|(i, _)| *i != fi)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Every finished run's score by (row, panel, fraction) and draw.
fn draws_of(runs: &[Run], row_axis: &str, col_axes: &[String], fi: usize) -> Draws {
    let mut draws = Draws::new();
    for r in runs {
        let (Some(row), Some(d), Some(v)) = (r.axes.get(row_axis), r.draw(), r.metric) else {
            continue;
        };
        let Some(cols) = col_axes
            .iter()
            .map(|c| r.axes.get(c).cloned())
            .collect::<Option<Vec<String>>>()
        else {
            continue;
        };
        draws
            .entry((row.clone(), panel_of(&cols, fi), cols[fi].clone()))
            .or_default()
            .insert(d, 100.0 * v);
    }
    draws
}

/// One point of row `r` at fraction `f` (`x` on the axis): its score, or its gain over the
/// baseline `b` (mean ± std of the per-draw differences; the difference of the means when no
/// draws pair up).
fn point(
    (own, base): (&Cell, Option<&Cell>),
    draws: &Draws,
    (r, b): (&str, Option<&str>),
    pv: &[String],
    (x, f): (f64, &str),
) -> Point {
    let (Some(base), Some(b)) = (base, b) else {
        return Point {
            x,
            mean: own.stats.mean,
            std: own.stats.std,
            n: own.stats.n,
        };
    };
    let key = |row: &str| (row.to_string(), pv.to_vec(), f.to_string());
    let diffs: Vec<f64> = match (draws.get(&key(r)), draws.get(&key(b))) {
        (Some(a), Some(l)) => a
            .iter()
            .filter_map(|(d, v)| l.get(d).map(|w| v - w))
            .collect(),
        _ => Vec::new(),
    };
    if diffs.is_empty() {
        // No paired draws in runs.csv: the difference of the means.
        return Point {
            x,
            mean: own.stats.mean - base.stats.mean,
            std: 0.0,
            n: 0,
        };
    }
    let (mean, std) = mean_std(&diffs);
    Point {
        x,
        mean,
        std,
        n: diffs.len(),
    }
}

/// The lines from a table's cells and its runs (`row_axis` names the methods; `col_axes` must
/// include `fraction`).
pub fn data(
    cells: &[Cell],
    runs: &[Run],
    row_axis: &str,
    col_axes: &[String],
    metric: &str,
) -> anyhow::Result<Gain> {
    let fi = col_axes
        .iter()
        .position(|c| c == "fraction")
        .ok_or_else(|| anyhow::anyhow!("the gain figure needs a `fraction` column axis"))?;
    let others = panel_of(col_axes, fi);
    let rows = order(cells.iter().map(|c| c.row.clone()));
    let baseline = rows
        .iter()
        .find(|r| style::method_key(r) == "linear")
        .cloned();
    let draws = draws_of(runs, row_axis, col_axes, fi);
    let mut fractions: Vec<(f64, String)> = order(cells.iter().map(|c| c.cols[fi].clone()))
        .into_iter()
        .filter_map(|f| Some((style::numeric(&f)?, f)))
        .collect();
    fractions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let panel = |key: String| -> Panel {
        let pv: Vec<String> = if others.is_empty() {
            Vec::new()
        } else {
            key.split('\u{1f}').map(str::to_owned).collect()
        };
        let cell = |row: &str, f: &str| {
            cells
                .iter()
                .find(|c| c.row == row && panel_of(&c.cols, fi) == pv && c.cols[fi] == f)
        };
        let b = baseline.as_deref();
        let series = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| Some(r.as_str()) != b)
            .map(|(i, r)| Series {
                label: style::display(r),
                color: style::color(r, i),
                points: fractions
                    .iter()
                    .filter_map(|(x, f)| {
                        let own = cell(r, f)?;
                        let base = match b {
                            Some(b) => Some(cell(b, f)?),
                            None => None,
                        };
                        Some(point((own, base), &draws, (r, b), &pv, (*x, f)))
                    })
                    .collect(),
            })
            .collect();
        Panel {
            title: style::combo_label(&others, &pv),
            series,
        }
    };
    let panels = order(cells.iter().map(|c| panel_of(&c.cols, fi).join("\u{1f}")))
        .into_iter()
        .map(panel)
        .collect();
    Ok(Gain {
        panels,
        ticks: fractions,
        y_label: match &baseline {
            Some(_) => format!(
                "gain over linear probing ({} points)",
                crate::config::metrics::metric_title(metric)
            ),
            None => style::metric_label(metric),
        },
        baseline,
    })
}

pub struct Draw<'a> {
    pub data: &'a Gain,
    pub title: &'a str,
}

impl Draw<'_> {
    fn stack(&self) -> Stack<'_, Panel> {
        let legend = self
            .data
            .panels
            .first()
            .map(|p| {
                p.series
                    .iter()
                    .map(|s| (s.label.clone(), Key::Line(s.color)))
                    .collect()
            })
            .unwrap_or_default();
        let caption = match &self.data.baseline {
            Some(b) => format!(
                "Gain = method − {} on the same draw (same training subset); mean ± sample std of the paired differences over draws; dashed: no gain.",
                style::display(b)
            ),
            None => "This grid has no linear-probing row: absolute scores, mean ± sample std over draws.".into(),
        };
        Stack {
            width: style::COLUMN_PX,
            panel_height: 720,
            title: self.title,
            caption,
            panels: &self.data.panels,
            legend,
        }
    }
}

impl Figure for Draw<'_> {
    fn size(&self) -> (u32, u32) {
        let s = self.stack();
        (s.width, s.height())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let d = self.data;
        let s = self.stack();
        let pts = d
            .panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| &s.points));
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for p in pts.clone() {
            lo = lo.min(p.mean - p.std);
            hi = hi.max(p.mean + p.std);
        }
        let pad = ((hi - lo) * 0.08).max(0.5);
        let (lo, hi) = (lo - pad, hi + pad);
        let lx: Vec<f64> = d.ticks.iter().map(|t| t.0.log10()).collect();
        let (x0, x1) = match (lx.first(), lx.last()) {
            (Some(a), Some(b)) if b > a => (a - 0.15 * (b - a), b + 0.15 * (b - a)),
            (Some(a), _) => (a - 0.5, a + 0.5),
            _ => (0.0, 2.0),
        };
        for (area, p) in s.layout(root)?.iter().zip(&d.panels) {
            let mut b = ChartBuilder::on(area);
            b.margin(14)
                .margin_right(36)
                .x_label_area_size(style::TICK + style::LABEL + 30)
                .y_label_area_size(style::LABEL * 2 + 40);
            if !p.title.is_empty() {
                b.caption(&p.title, font(style::LABEL));
            }
            let mut ch = b.build_cartesian_2d(
                parts::KeyAxis {
                    lo: x0,
                    hi: x1,
                    keys: lx.clone(),
                },
                lo..hi,
            )?;
            let ticks = d.ticks.clone();
            ch.configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(225, 225, 225))
                .x_label_formatter(&|v| {
                    ticks
                        .iter()
                        .find(|t| (t.0.log10() - v).abs() < 1e-9)
                        .map(|t| t.1.clone())
                        .unwrap_or_default()
                })
                .y_labels(6)
                .y_label_formatter(&|v| style::tick(*v, hi - lo))
                .x_desc(style::axis_label("fraction") + ", log scale")
                .y_desc(&d.y_label)
                .label_style(font(style::TICK))
                .axis_desc_style(font(style::LABEL))
                .draw()?;
            if d.baseline.is_some() {
                ch.draw_series(DashedLineSeries::new(
                    vec![(x0, 0.0), (x1, 0.0)],
                    12,
                    8,
                    BLACK.stroke_width(2),
                ))?;
            }
            for s in &p.series {
                let xy: Vec<(f64, f64)> = s.points.iter().map(|q| (q.x.log10(), q.mean)).collect();
                ch.draw_series(LineSeries::new(xy.clone(), s.color.stroke_width(4)))?;
                ch.draw_series(xy.iter().map(|&c| Circle::new(c, 7, s.color.filled())))?;
                ch.draw_series(s.points.iter().filter(|q| q.std > 0.0).map(|q| {
                    ErrorBar::new_vertical(
                        q.x.log10(),
                        q.mean - q.std,
                        q.mean,
                        q.mean + q.std,
                        s.color.stroke_width(2),
                        10,
                    )
                }))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::tables::{CellStats, RunFields};

    fn cell(row: &str, ds: &str, f: &str, mean: f64) -> Cell {
        Cell {
            row: row.into(),
            cols: vec![ds.into(), f.into()],
            stats: CellStats {
                mean,
                std: 1.0,
                n: 2,
                failed: 0,
                paper: None,
                metric: "accuracy".into(),
            },
        }
    }

    fn run(method: &str, ds: &str, f: &str, draw: u64, v: f64) -> Run {
        Run {
            fields: RunFields {
                id: format!("{method}{ds}{f}{draw}"),
                status: "ok".into(),
                trainable_params: None,
                info: "{}".into(),
                finished_utc: String::new(),
            },
            axes: [
                ("method", method),
                ("dataset", ds),
                ("fraction", f),
                ("draw", &draw.to_string()),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            metric: Some(v),
        }
    }

    #[test]
    fn gains_are_paired_by_draw_against_linear_probing() {
        let axes = vec!["dataset".to_string(), "fraction".to_string()];
        let cells = vec![
            cell("linear", "busi-cls", "100%", 70.0),
            cell("dka", "busi-cls", "100%", 80.0),
            cell("linear", "busi-cls", "1.25%", 50.0),
            cell("dka", "busi-cls", "1.25%", 60.0),
        ];
        let runs = vec![
            run("linear", "busi-cls", "1.25%", 0, 0.50),
            run("linear", "busi-cls", "1.25%", 1, 0.40),
            run("dka", "busi-cls", "1.25%", 0, 0.60),
            run("dka", "busi-cls", "1.25%", 1, 0.54),
            run("dka", "busi-cls", "1.25%", 2, 0.99), // no linear draw 2: not paired
        ];
        let g = data(&cells, &runs, "method", &axes, "accuracy").unwrap();
        assert_eq!(g.baseline.as_deref(), Some("linear"));
        assert_eq!(
            g.ticks,
            vec![(1.25, "1.25%".into()), (100.0, "100%".into())]
        );
        assert_eq!(g.panels.len(), 1);
        assert_eq!(g.panels[0].title, "BUSI");
        let s = &g.panels[0].series;
        assert_eq!(s.len(), 1, "linear is the baseline, not a line");
        assert_eq!(s[0].label, "DKA");
        // 1.25 %: differences 10 and 14 points: mean 12, std sqrt(8) = 2.83.
        let p = s[0].points[0];
        assert_eq!((p.x, p.n), (1.25, 2));
        assert!((p.mean - 12.0).abs() < 1e-9 && (p.std - 8f64.sqrt()).abs() < 1e-9);
        // 100 %: no runs, the difference of the table's means.
        assert_eq!(
            s[0].points[1],
            Point {
                x: 100.0,
                mean: 10.0,
                std: 0.0,
                n: 0
            }
        );
    }

    #[test]
    fn without_linear_probing_the_scores_are_shown() {
        let axes = vec!["dataset".to_string(), "fraction".to_string()];
        let cells = vec![cell("dka", "folder", "10%", 40.0)];
        let g = data(&cells, &[], "method", &axes, "accuracy").unwrap();
        assert_eq!(g.baseline, None);
        assert_eq!(g.panels[0].series[0].points[0].mean, 40.0);
        assert_eq!(g.y_label, "accuracy (%)");
        assert!(data(&cells, &[], "method", &axes[..1], "accuracy").is_err());
    }
}
