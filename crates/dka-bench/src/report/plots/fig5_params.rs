//! Figure 5: score against trainable parameters (log axis), one marker per method (± sample
//! std over draws), one panel per column combination (dataset × fraction). The parameter count
//! of a method is the `trainable_params` its runs recorded (runs.csv), head included.
use super::parts::{self, Key, Stack};
use super::style::{self, font, Figure};
use super::tables::{order, Cell, Run};
use crate::util::stats::median;
use plotters::coord::Shift;
use plotters::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    pub color: RGBColor,
    /// Trainable parameters (median over the cell's runs).
    pub params: f64,
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub panels: Vec<Panel>,
    pub y_label: String,
    /// Cells left out because no run recorded a parameter count.
    pub missing: usize,
}

pub fn data(
    cells: &[Cell],
    runs: &[Run],
    row_axis: &str,
    col_axes: &[String],
    metric: &str,
) -> Params {
    let rows = order(cells.iter().map(|c| c.row.clone()));
    let mut missing = 0;
    let panels = order(cells.iter().map(|c| c.cols.join("\u{1f}")))
        .into_iter()
        .map(|key| {
            let cols: Vec<String> = cells
                .iter()
                .find(|c| c.cols.join("\u{1f}") == key)
                .map(|c| c.cols.clone())
                .unwrap_or_default();
            let points = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let c = cells.iter().find(|c| &c.row == r && c.cols == cols)?;
                    let counts: Vec<f64> = runs
                        .iter()
                        .filter(|x| {
                            x.axes.get(row_axis) == Some(r)
                                && col_axes
                                    .iter()
                                    .zip(&cols)
                                    .all(|(a, v)| x.axes.get(a) == Some(v))
                        })
                        .filter_map(|x| x.fields.trainable_params)
                        .collect();
                    let Some(params) = median(&counts).filter(|p| *p > 0.0) else {
                        missing += 1;
                        return None;
                    };
                    Some(Point {
                        label: style::display(r),
                        color: style::color(r, i),
                        params,
                        mean: c.stats.mean,
                        std: c.stats.std,
                    })
                })
                .collect();
            Panel {
                title: style::combo_label(col_axes, &cols),
                points,
            }
        })
        .collect();
    Params {
        panels,
        y_label: style::metric_label(metric),
        missing,
    }
}

pub struct Draw<'a> {
    pub data: &'a Params,
    pub title: &'a str,
}

impl Draw<'_> {
    fn stack(&self) -> Stack<'_, Panel> {
        let mut seen: Vec<(String, Key)> = Vec::new();
        for p in self.data.panels.iter().flat_map(|p| &p.points) {
            if !seen.iter().any(|s| s.0 == p.label) {
                seen.push((p.label.clone(), Key::Box(p.color)));
            }
        }
        let mut caption = "Trainable parameters as the runs recorded them (head included), log scale; mean ± sample std over draws.".to_string();
        if self.data.missing > 0 {
            caption += &format!(
                " {} cell(s) without a recorded parameter count are left out.",
                self.data.missing
            );
        }
        Stack {
            width: style::COLUMN_PX,
            panel_height: 660,
            title: self.title,
            caption,
            panels: &self.data.panels,
            legend: seen,
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
        let s = self.stack();
        let all: Vec<&Point> = self.data.panels.iter().flat_map(|p| &p.points).collect();
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for p in &all {
            x0 = x0.min(p.params.log10());
            x1 = x1.max(p.params.log10());
            y0 = y0.min(p.mean - p.std);
            y1 = y1.max(p.mean + p.std);
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (3.0, 6.0, 0.0, 100.0);
        }
        let (x0, x1) = (x0.floor() - 0.1, x1.ceil() + 0.1);
        let pad = ((y1 - y0) * 0.12).max(1.0);
        let (y0, y1) = ((y0 - pad).max(0.0), (y1 + pad).min(100.0).max(y0 + 1.0));
        let decades: Vec<f64> = ((x0.ceil() as i32)..=(x1.floor() as i32))
            .map(f64::from)
            .collect();
        for (area, p) in s.layout(root)?.iter().zip(&self.data.panels) {
            let mut ch = ChartBuilder::on(area)
                .margin(14)
                .margin_right(36)
                .caption(&p.title, font(style::LABEL))
                .x_label_area_size(style::TICK + style::LABEL + 30)
                .y_label_area_size(style::LABEL * 2 + 40)
                .build_cartesian_2d(
                    parts::KeyAxis {
                        lo: x0,
                        hi: x1,
                        keys: decades.clone(),
                    },
                    y0..y1,
                )?;
            ch.configure_mesh()
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(225, 225, 225))
                .x_label_formatter(&|v| style::si(10f64.powf(*v)))
                .y_labels(6)
                .y_label_formatter(&|v| style::tick(*v, y1 - y0))
                .x_desc("trainable parameters (log scale)")
                .y_desc(&self.data.y_label)
                .label_style(font(style::TICK))
                .axis_desc_style(font(style::LABEL))
                .draw()?;
            for q in &p.points {
                let x = q.params.log10();
                if q.std > 0.0 {
                    ch.draw_series(std::iter::once(ErrorBar::new_vertical(
                        x,
                        q.mean - q.std,
                        q.mean,
                        q.mean + q.std,
                        q.color.stroke_width(2),
                        10,
                    )))?;
                }
                ch.draw_series(std::iter::once(Circle::new(
                    (x, q.mean),
                    10,
                    q.color.filled(),
                )))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::tables::{CellStats, RunFields};

    #[test]
    fn each_method_sits_at_its_recorded_parameter_count() {
        let axes = vec!["dataset".to_string(), "fraction".to_string()];
        let cell = |row: &str, mean: f64| Cell {
            row: row.into(),
            cols: vec!["busi-cls".into(), "1.25%".into()],
            stats: CellStats {
                mean,
                std: 2.0,
                n: 3,
                failed: 0,
                paper: None,
                metric: "accuracy".into(),
            },
        };
        let run = |m: &str, d: &str, p: Option<f64>| Run {
            fields: RunFields {
                id: format!("{m}{d}"),
                status: "ok".into(),
                trainable_params: p,
                info: "{}".into(),
                finished_utc: String::new(),
            },
            axes: [
                ("method", m),
                ("dataset", "busi-cls"),
                ("fraction", "1.25%"),
                ("draw", d),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            metric: Some(0.5),
        };
        let cells = vec![
            cell("LoRA r8", 70.0),
            cell("DKA d6", 75.0),
            cell("vpt", 60.0),
        ];
        let runs = vec![
            run("LoRA r8", "0", Some(300_000.0)),
            run("LoRA r8", "1", Some(300_000.0)),
            run("DKA d6", "0", Some(290_000.0)),
            run("vpt", "0", None),
        ];
        let p = data(&cells, &runs, "method", &axes, "accuracy");
        assert_eq!(p.panels.len(), 1);
        assert_eq!(p.panels[0].title, "BUSI 1.25%");
        let pts = &p.panels[0].points;
        assert_eq!(pts.len(), 2);
        assert_eq!(
            (pts[0].label.as_str(), pts[0].params),
            ("LoRA r8", 300_000.0)
        );
        assert_eq!(
            (pts[1].params, pts[1].mean, pts[1].color),
            (290_000.0, 75.0, style::DKA)
        );
        assert_eq!(p.missing, 1, "vpt recorded no count");
    }
}
