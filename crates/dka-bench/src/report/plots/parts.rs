//! Drawing pieces several figures share: grouped bars with error bars (and the paper's
//! numbers as markers), a legend band, an annotated heatmap with a colour bar.
use super::style::{self, font};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;

/// A linear f64 axis whose ticks (labels and bold grid lines) sit exactly at given values,
/// e.g. the data fractions on a log10 axis.
#[derive(Debug, Clone)]
pub struct KeyAxis {
    pub lo: f64,
    pub hi: f64,
    pub keys: Vec<f64>,
}

impl Ranged for KeyAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.keys.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// One bar: mean ± std over draws (percent) and, where it has one, the paper's number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub mean: f64,
    pub std: f64,
    pub paper: Option<f64>,
}

/// One series of bars (a method), one value per group (`None`: no runs).
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub label: String,
    pub color: RGBColor,
    pub values: Vec<Option<Bar>>,
}

/// A panel of grouped bars: groups along x, one bar per series in each group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarPanel {
    pub title: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
}

impl BarPanel {
    /// The y range that holds every bar, error bar and paper number.
    pub fn y_range(&self) -> (f64, f64) {
        let vals = self.series.iter().flat_map(|s| s.values.iter().flatten());
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for b in vals {
            lo = lo.min(b.mean - b.std);
            hi = hi.max(b.mean + b.std).max(b.paper.unwrap_or(0.0));
        }
        (if lo < 0.0 { lo * 1.08 } else { 0.0 }, hi * 1.08)
    }
}

/// Legend entries: a filled box, a line with a dot, or the paper's diamond.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Box(RGBColor),
    Line(RGBColor),
    Paper,
}

/// Height of a legend band of `entries` labels at width `w`.
pub fn legend_height(w: u32, labels: &[String]) -> u32 {
    let (_, rows) = legend_layout(w, labels);
    style::text_height(rows, style::LEGEND) + 10
}

fn legend_layout(w: u32, labels: &[String]) -> (usize, usize) {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    let cell = (longest as f64 * style::LEGEND as f64 * 0.55) as u32 + 2 * style::LEGEND + 10;
    let cols = ((w.saturating_sub(20)) / cell.max(1)).clamp(1, labels.len().max(1) as u32) as usize;
    (cols, labels.len().div_ceil(cols))
}

/// A legend band: entries laid out in columns across `area`.
pub fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Key)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let labels: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    let (cols, _) = legend_layout(w, &labels);
    let cw = (w as i32 - 20) / cols as i32;
    let s = style::LEGEND as i32;
    let lh = (style::LEGEND as f64 * 1.25) as i32;
    for (i, (label, key)) in entries.iter().enumerate() {
        let x = 10 + (i % cols) as i32 * cw;
        let y = 5 + (i / cols) as i32 * lh;
        let mid = y + s / 2;
        match key {
            Key::Box(c) => {
                area.draw(&Rectangle::new(
                    [(x, y + s / 6), (x + s, y + s - s / 6)],
                    c.filled(),
                ))?;
            }
            Key::Line(c) => {
                area.draw(&PathElement::new(
                    vec![(x, mid), (x + s + 8, mid)],
                    c.stroke_width(4),
                ))?;
                area.draw(&Circle::new((x + (s + 8) / 2, mid), 6, c.filled()))?;
            }
            Key::Paper => {
                area.draw(&diamond((x + s / 2, mid), s / 3))?;
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (x + s + 14, y),
            font(style::LEGEND),
        ))?;
    }
    Ok(())
}

/// The paper's marker: a black diamond centred at `c` (backend coordinates).
pub fn diamond(c: (i32, i32), r: i32) -> Polygon<(i32, i32)> {
    Polygon::new(
        vec![
            (c.0, c.1 - r),
            (c.0 + r, c.1),
            (c.0, c.1 + r),
            (c.0 - r, c.1),
        ],
        style::PAPER.filled(),
    )
}

/// Draws one panel of grouped bars; y from `y_range`, labelled `y_label`.
pub fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &BarPanel,
    y_label: &str,
    y_range: (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let groups = p.groups.clone();
    let n = p.groups.len().max(1);
    let per = p.series.len() as f64 + 0.8;
    let mut b = ChartBuilder::on(area);
    b.margin(12)
        .x_label_area_size(style::TICK + 16)
        .y_label_area_size(style::LABEL * 2 + 40);
    if !p.title.is_empty() {
        b.caption(&p.title, font(style::LABEL));
    }
    let mut ch = b.build_cartesian_2d(0f64..n as f64, y_range.0..y_range.1)?;
    let centre = move |x: &f64| {
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            groups.get(x.floor() as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    ch.configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(4 * n)
        .x_label_formatter(&centre)
        .y_labels(6)
        .y_label_formatter(&|v| style::tick(*v, y_range.1 - y_range.0))
        .y_desc(y_label)
        .label_style(font(style::TICK))
        .axis_desc_style(font(style::LABEL))
        .draw()?;
    let w = 0.42 / per;
    for (i, s) in p.series.iter().enumerate() {
        let x_of = |g: usize| g as f64 + (i as f64 + 0.9) / per;
        let color = s.color;
        ch.draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
            v.map(|v| Rectangle::new([(x_of(g) - w, 0.0), (x_of(g) + w, v.mean)], color.filled()))
        }))?;
        ch.draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
            v.filter(|v| v.std > 0.0).map(|v| {
                ErrorBar::new_vertical(
                    x_of(g),
                    v.mean - v.std,
                    v.mean,
                    v.mean + v.std,
                    BLACK.stroke_width(2),
                    8,
                )
            })
        }))?;
        let coords: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(g, v)| v.and_then(|v| v.paper).map(|p| (x_of(g), p)))
            .collect();
        ch.draw_series(coords.iter().map(|&c| {
            EmptyElement::at(c)
                + Polygon::new(
                    vec![(0, -9), (9, 0), (0, 9), (-9, 0)],
                    style::PAPER.filled(),
                )
        }))?;
    }
    Ok(())
}

/// An annotated heatmap: rows × columns of mean ± std (percent), coloured by the mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Heat {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// `values[r][c]`: (mean, std, n) or no runs.
    pub values: Vec<Vec<Option<(f64, f64, usize)>>>,
    pub x_label: String,
    pub y_label: String,
    pub value_label: String,
}

impl Heat {
    pub fn range(&self) -> (f64, f64) {
        let (lo, hi) = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v.0), b.max(v.0))
            });
        if lo.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    }
}

/// Draws `h` with its colour bar at the right.
pub fn heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, h: &Heat) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let bar_w = (style::TICK * 3 + style::LABEL + 60).min(w / 3);
    let (main, side) = area.split_horizontally(w - bar_w);
    let (lo, hi) = h.range();
    let t = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let (rows, cols) = (h.rows.clone(), h.cols.clone());
    let longest_row = rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as u32;
    let mut ch = ChartBuilder::on(&main)
        .margin(12)
        .x_label_area_size(style::TICK + style::LABEL + 30)
        .y_label_area_size(style::LABEL + 30 + longest_row * style::TICK * 6 / 10)
        .build_cartesian_2d(0f64..cols.len() as f64, 0f64..rows.len() as f64)?;
    let centre = |v: f64, names: &[String]| {
        if (v - v.floor() - 0.5).abs() < 1e-6 {
            names.get(v.floor() as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    ch.configure_mesh()
        .disable_mesh()
        .x_labels(4 * cols.len())
        .y_labels(4 * rows.len())
        .x_label_formatter(&|v| centre(*v, &cols))
        .y_label_formatter(&|v| centre(*v, &rows))
        .x_desc(&h.x_label)
        .y_desc(&h.y_label)
        .label_style(font(style::TICK))
        .axis_desc_style(font(style::LABEL))
        .draw()?;
    for (r, row) in h.values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let (x0, y0) = (c as f64, r as f64);
            match v {
                Some((m, s, n)) => {
                    let color = style::viridis(t(*m));
                    ch.draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        color.filled(),
                    )))?;
                    let ink = style::ink_on(color);
                    let text = if *n > 1 {
                        format!("{m:.1}±{s:.1}")
                    } else {
                        format!("{m:.1}")
                    };
                    let st = font(style::CELL).color(&ink).pos(text_anchor::Pos::new(
                        text_anchor::HPos::Center,
                        text_anchor::VPos::Center,
                    ));
                    ch.draw_series(std::iter::once(Text::new(text, (x0 + 0.5, y0 + 0.5), st)))?;
                }
                None => {
                    ch.draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        RGBColor(235, 235, 235).filled(),
                    )))?;
                }
            }
        }
    }
    colour_bar(&side, lo, hi, &h.value_label, style::viridis)
}

/// A vertical colour bar from `lo` (bottom) to `hi` (top) in `area`: ticks on its right,
/// `label` rotated at the far right.
pub fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lo: f64,
    hi: f64,
    label: &str,
    map: fn(f64) -> RGBColor,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let (w, h) = area.dim_in_pixel();
    let strip = style::LABEL + 14;
    let (bar, text) = area.split_horizontally(w.saturating_sub(strip));
    let bottom = style::TICK + style::LABEL + 42;
    let mut ch = ChartBuilder::on(&bar)
        .margin_top(12)
        .margin_bottom(bottom)
        .margin_left(16)
        .right_y_label_area_size(style::TICK * 3)
        .build_cartesian_2d(0f64..1f64, lo..hi)?;
    ch.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .set_all_tick_mark_size(8)
        .y_label_formatter(&|v| style::tick(*v, hi - lo))
        .label_style(font(style::TICK))
        .draw()?;
    let steps = 100;
    ch.draw_series((0..steps).map(|i| {
        let a = lo + (hi - lo) * i as f64 / steps as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], map((a - lo) / (hi - lo)).filled())
    }))?;
    text.draw(&Text::new(
        label.to_string(),
        (strip as i32 / 2, (12 + h as i32 - bottom as i32) / 2),
        font(style::LABEL)
            .transform(FontTransform::Rotate270)
            .pos(text_anchor::Pos::new(
                text_anchor::HPos::Center,
                text_anchor::VPos::Center,
            )),
    ))?;
    Ok(())
}

/// A figure of stacked panels drawn by `draw_panel`, under a title, with an optional legend band
/// and caption (for figures whose panels share one legend).
pub struct Stack<'a, P> {
    pub width: u32,
    pub panel_height: u32,
    pub title: &'a str,
    pub caption: String,
    pub panels: &'a [P],
    pub legend: Vec<(String, Key)>,
}

impl<P> Stack<'_, P> {
    pub fn height(&self) -> u32 {
        let labels: Vec<String> = self.legend.iter().map(|e| e.0.clone()).collect();
        style::frame_height(self.width, self.title, &self.caption)
            + self.panel_height * self.panels.len().max(1) as u32
            + if labels.is_empty() {
                0
            } else {
                legend_height(self.width, &labels)
            }
    }

    /// Title and caption drawn; returns the panels' areas (top to bottom).
    pub fn layout<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> anyhow::Result<Vec<DrawingArea<DB, Shift>>>
    where
        DB::ErrorType: 'static,
    {
        let body = style::frame(root, self.title, &self.caption)?;
        let labels: Vec<String> = self.legend.iter().map(|e| e.0.clone()).collect();
        let lh = if labels.is_empty() {
            0
        } else {
            legend_height(self.width, &labels)
        };
        let (_, bh) = body.dim_in_pixel();
        let (panels, band) = body.split_vertically(bh - lh);
        if lh > 0 {
            legend(&band, &self.legend)?;
        }
        Ok(panels.split_evenly((self.panels.len().max(1), 1)))
    }
}

/// A table's cells as a heatmap: rows = the row axis, columns = the column combinations, both
/// sorted numerically when every value is a number (rows from the bottom up), labelled by
/// `row_label` / `col_label`.
pub fn heat_from_cells(
    cells: &[super::tables::Cell],
    row_axis: &str,
    col_axes: &[String],
    metric: &str,
    row_label: fn(&str) -> String,
    col_label: fn(&str) -> String,
) -> Heat {
    use super::tables::order;
    let sorted = |mut v: Vec<String>| {
        if v.iter().all(|x| style::numeric(x).is_some()) {
            v.sort_by(|a, b| {
                style::numeric(a)
                    .unwrap_or(0.0)
                    .total_cmp(&style::numeric(b).unwrap_or(0.0))
            });
        }
        v
    };
    let rows = sorted(order(cells.iter().map(|c| c.row.clone())));
    let cols = sorted(order(cells.iter().map(|c| c.cols.join(" "))));
    let values = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| {
                    cells
                        .iter()
                        .find(|x| &x.row == r && &x.cols.join(" ") == c)
                        .map(|x| (x.stats.mean, x.stats.std, x.stats.n))
                })
                .collect()
        })
        .collect();
    Heat {
        rows: rows.iter().map(|r| row_label(r)).collect(),
        cols: cols.iter().map(|c| col_label(c)).collect(),
        values,
        x_label: col_axes
            .iter()
            .map(|a| style::axis_label(a))
            .collect::<Vec<_>>()
            .join(", "),
        y_label: style::axis_label(row_axis),
        value_label: style::metric_label(metric),
    }
}

/// A figure of one heatmap under a title, with a caption.
pub struct HeatFigure<'a> {
    pub heat: &'a Heat,
    pub title: &'a str,
    pub caption: String,
}

impl style::Figure for HeatFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let side = 110 * self.heat.rows.len().max(self.heat.cols.len()).clamp(3, 8) as u32;
        (
            style::COLUMN_PX,
            style::frame_height(style::COLUMN_PX, self.title, &self.caption)
                + side
                + style::TICK
                + style::LABEL
                + 70,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = style::frame(root, self.title, &self.caption)?;
        heatmap(&body, self.heat)
    }
}
