//! Tables 1, 2 and 3 (and the demo) as a figure: grouped bars of our mean ± std over draws,
//! one panel per value of the first column axis (dataset), groups = the other column axes
//! (fraction), one bar per row (method), and the paper's number as a black diamond on the bar
//! it belongs to.
use super::parts::{self, Bar, BarPanel, BarSeries, Key, Stack};
use super::style::{self, Figure};
use super::tables::{order, Cell};
use plotters::coord::Shift;
use plotters::prelude::*;

/// What the figure shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TableBars {
    pub panels: Vec<BarPanel>,
    pub paper: bool,
    pub y_label: String,
}

/// The panels from a table's cells.
pub fn data(cells: &[Cell], col_axes: &[String], metric: &str) -> TableBars {
    let rows = order(cells.iter().map(|c| c.row.clone()));
    let split = col_axes.len() >= 2;
    let panel_of = |c: &Cell| -> String {
        if split {
            c.cols[0].clone()
        } else {
            String::new()
        }
    };
    let group_of = |c: &Cell| -> String {
        if split {
            style::combo_label(&col_axes[1..], &c.cols[1..])
        } else {
            style::combo_label(col_axes, &c.cols)
        }
    };
    let panels = order(cells.iter().map(panel_of))
        .into_iter()
        .map(|p| {
            let mine: Vec<&Cell> = cells.iter().filter(|c| panel_of(c) == p).collect();
            let groups = order(mine.iter().map(|c| group_of(c)));
            let series = rows
                .iter()
                .enumerate()
                .map(|(i, r)| BarSeries {
                    label: style::display(r),
                    color: style::color(r, i),
                    values: groups
                        .iter()
                        .map(|g| {
                            mine.iter()
                                .find(|c| &c.row == r && &group_of(c) == g)
                                .map(|c| Bar {
                                    mean: c.stats.mean,
                                    std: c.stats.std,
                                    paper: c.stats.paper,
                                })
                        })
                        .collect(),
                })
                .collect();
            let title = match (split, col_axes.first().map(String::as_str)) {
                (false, _) => String::new(),
                (true, Some("dataset")) => style::dataset_label(&p),
                (true, _) => p.clone(),
            };
            BarPanel {
                title,
                groups,
                series,
            }
        })
        .collect();
    TableBars {
        paper: cells.iter().any(|c| c.stats.paper.is_some()),
        panels,
        y_label: style::metric_label(metric),
    }
}

/// The figure: `data` under `title`.
pub struct Draw<'a> {
    pub data: &'a TableBars,
    pub title: &'a str,
}

impl Draw<'_> {
    fn stack(&self) -> Stack<'_, BarPanel> {
        let bars = self
            .data
            .panels
            .iter()
            .map(|p| p.groups.len() * p.series.len())
            .max()
            .unwrap_or(0);
        let mut legend: Vec<(String, Key)> = self
            .data
            .panels
            .first()
            .map(|p| {
                p.series
                    .iter()
                    .map(|s| (s.label.clone(), Key::Box(s.color)))
                    .collect()
            })
            .unwrap_or_default();
        let mut caption =
            "Bars: ours, mean ± sample std over draws (error bars; none with one draw)."
                .to_string();
        if self.data.paper {
            legend.push(("paper".into(), Key::Paper));
            caption += " ◆: the paper's own number, transcribed from its poster (not ours).";
        }
        Stack {
            width: if bars > 24 {
                style::PAGE_PX
            } else {
                style::COLUMN_PX
            },
            panel_height: 620,
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
        let s = self.stack();
        // One y range for every panel, so panels compare at a glance.
        let y = self
            .data
            .panels
            .iter()
            .map(BarPanel::y_range)
            .fold((0.0f64, 1.0f64), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        for (area, p) in s.layout(root)?.iter().zip(&self.data.panels) {
            parts::bars(area, p, &self.data.y_label, y)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::plots::tables::CellStats;

    pub(crate) fn cell(row: &str, cols: &[&str], mean: f64, std: f64, paper: Option<f64>) -> Cell {
        Cell {
            row: row.into(),
            cols: cols.iter().map(|s| s.to_string()).collect(),
            stats: CellStats {
                mean,
                std,
                n: 3,
                failed: 0,
                paper,
                metric: "accuracy".into(),
            },
        }
    }

    #[test]
    fn one_panel_per_dataset_bars_per_method_paper_beside() {
        let axes = vec!["dataset".to_string(), "fraction".to_string()];
        let cells = vec![
            cell("lora", &["covid", "1.25%"], 80.0, 1.0, Some(85.0)),
            cell("dka", &["covid", "1.25%"], 82.0, 2.0, Some(89.0)),
            cell("dka", &["covid", "100%"], 95.0, 0.5, None),
            cell("dka", &["busi-cls", "100%"], 85.0, 0.5, None),
        ];
        let d = data(&cells, &axes, "accuracy");
        assert!(d.paper);
        assert_eq!(d.panels.len(), 2);
        assert_eq!(d.panels[0].title, "COVID");
        assert_eq!(d.panels[0].groups, ["1.25%", "100%"]);
        assert_eq!(d.panels[0].series[0].label, "LoRA");
        assert_eq!(
            d.panels[0].series[0].values[1], None,
            "lora has no 100 % cell"
        );
        assert_eq!(
            d.panels[0].series[1].values[0],
            Some(Bar {
                mean: 82.0,
                std: 2.0,
                paper: Some(89.0)
            })
        );
        assert_eq!(d.panels[1].groups, ["100%"]);
        assert_eq!(d.y_label, "accuracy (%)");
    }
}
