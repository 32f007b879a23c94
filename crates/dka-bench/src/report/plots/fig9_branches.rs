//! Figure 9: DKA with the large kernel only, the small kernel only, and both: grouped bars of
//! mean ± sample std over draws, one group per column combination (dataset × fraction).
use super::parts::{self, Bar, BarPanel, BarSeries, Key, Stack};
use super::style::{self, Figure};
use super::tables::{order, Cell};
use plotters::coord::Shift;
use plotters::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Branches {
    pub panel: BarPanel,
    pub y_label: String,
}

/// The variants in the paper's order (large, small, both), others after them.
pub fn data(cells: &[Cell], col_axes: &[String], metric: &str) -> Branches {
    let mut rows = order(cells.iter().map(|c| c.row.clone()));
    let rank = |r: &String| match r.as_str() {
        "large" => 0,
        "small" => 1,
        "both" => 2,
        _ => 3,
    };
    rows.sort_by_key(rank);
    let combos = order(cells.iter().map(|c| c.cols.join("\u{1f}")));
    let groups = combos
        .iter()
        .map(|k| {
            let cols: Vec<String> = k.split('\u{1f}').map(str::to_owned).collect();
            style::combo_label(col_axes, &cols)
        })
        .collect();
    let series = rows
        .iter()
        .map(|r| BarSeries {
            label: style::display(r),
            color: match r.as_str() {
                "large" => style::PALETTE[0],
                "small" => style::PALETTE[1],
                "both" => style::DKA,
                _ => style::PALETTE[9],
            },
            values: combos
                .iter()
                .map(|k| {
                    cells
                        .iter()
                        .find(|c| &c.row == r && &c.cols.join("\u{1f}") == k)
                        .map(|c| Bar {
                            mean: c.stats.mean,
                            std: c.stats.std,
                            paper: None,
                        })
                })
                .collect(),
        })
        .collect();
    Branches {
        panel: BarPanel {
            title: String::new(),
            groups,
            series,
        },
        y_label: style::metric_label(metric),
    }
}

pub struct Draw<'a> {
    pub data: &'a Branches,
    pub title: &'a str,
}

impl Draw<'_> {
    fn stack(&self) -> Stack<'_, BarPanel> {
        Stack {
            width: style::COLUMN_PX,
            panel_height: 700,
            title: self.title,
            caption: "Large: the 51 × 51 depthwise kernel alone; small: the 5 × 5 alone; both: DKA. Mean ± sample std over draws.".into(),
            panels: std::slice::from_ref(&self.data.panel),
            legend: self
                .data
                .panel
                .series
                .iter()
                .map(|s| (s.label.clone(), Key::Box(s.color)))
                .collect(),
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
        let areas = s.layout(root)?;
        parts::bars(
            &areas[0],
            &self.data.panel,
            &self.data.y_label,
            self.data.panel.y_range(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::table_bars::tests::cell;

    #[test]
    fn variants_in_the_papers_order_grouped_by_dataset_and_fraction() {
        let axes = vec!["dataset".to_string(), "fraction".to_string()];
        let cells = vec![
            cell("both", &["covid", "1.25%"], 80.0, 1.0, None),
            cell("large", &["covid", "1.25%"], 75.0, 1.0, None),
            cell("small", &["covid", "1.25%"], 70.0, 1.0, None),
            cell("both", &["busi-cls", "100%"], 85.0, 1.0, None),
        ];
        let b = data(&cells, &axes, "accuracy");
        let labels: Vec<&str> = b.panel.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["large only", "small only", "both (DKA)"]);
        assert_eq!(b.panel.groups, ["COVID 1.25%", "BUSI 100%"]);
        assert_eq!(b.panel.series[0].values[1], None);
        assert_eq!(b.panel.series[2].values[1].unwrap().mean, 85.0);
        assert_eq!(b.panel.series[2].color, style::DKA);
    }
}
