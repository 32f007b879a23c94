//! Drawing figures 2 and 6 from their data ([`super::ErfGrid`]): the grid of maps with their
//! area ratios and colour bars ([`Draw`]), and one map alone ([`MapFigure`], `dka erf`'s
//! `erf.png`).
use super::{ErfGrid, ErfMap};
use crate::report::plots::parts::colour_bar;
use crate::report::plots::style::{self, font, Figure};
use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;

/// The RGB pixels of `map` resampled (nearest) to `side × side`, through viridis (or the
/// diverging map).
fn pixels(map: &ErfMap, side: u32, diverging: bool) -> Vec<u8> {
    let cmap = if diverging {
        style::diverging
    } else {
        style::viridis
    };
    let mut buf = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side as usize {
        let sy = (y * map.h / side as usize).min(map.h - 1);
        for x in 0..side as usize {
            let sx = (x * map.w / side as usize).min(map.w - 1);
            let c = cmap(map.values[sy * map.w + sx]);
            buf.extend([c.0, c.1, c.2]);
        }
    }
    buf
}

fn draw_map<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    map: &ErfMap,
    side: u32,
    diverging: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let x = (w.saturating_sub(side) / 2) as i32;
    let img = BitMapElement::with_owned_buffer((x, 0), (side, side), pixels(map, side, diverging))
        .context("an ERF bitmap of the wrong size")?;
    area.draw(&img)?;
    area.draw(&Rectangle::new(
        [(x, 0), (x + side as i32, side as i32)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// `t: r_t` for each threshold of `ts` found in the map, as `0.2: .050` (`–`: no square).
pub(super) fn ratio_text(map: &ErfMap, ts: &[f64]) -> String {
    ts.iter()
        .filter_map(|t| {
            let (_, r) = map.ratios.iter().find(|r| (r.0 - t).abs() < 1e-9)?;
            Some(match r {
                Some(r) => format!("{t}: {}", format!("{r:.3}").trim_start_matches('0')),
                None => format!("{t}: –"),
            })
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn col_label(f: &str) -> String {
    if f == "init" {
        "at init".into()
    } else {
        format!("{f} data")
    }
}

const COLOUR_LABEL: &str = "log10(x + 1), scaled to [0, 1]";
const CHANGE_LABEL: &str = "trained − initial (× a flat map's pixel)";

pub struct Draw<'a> {
    pub data: &'a ErfGrid,
    pub title: &'a str,
    /// Change maps (trained − initial): the symmetric scale `s` the values in [0, 1] stand
    /// for (`0` ↔ −s, `0.5` ↔ 0, `1` ↔ +s), drawn with a diverging map; `None`: ERF maps.
    pub change_scale: Option<f64>,
}

impl Draw<'_> {
    fn geometry(&self) -> (u32, u32, u32) {
        // Row labels, map cells, colour bar.
        let label_w = 200;
        let bar_w = 190;
        let cols = self.data.cols.len().max(1) as u32;
        let side = ((style::COLUMN_PX - label_w - bar_w) / cols - 16).min(300);
        (label_w, bar_w, side)
    }

    fn caption(&self) -> String {
        if self.change_scale.is_some() {
            return "Change of the effective receptive field with training: each method's trained \
                    map minus its map at initialisation, both as shares of their total, in units \
                    of the share a pixel of a flat map holds (1/(h·w)); red: more weight after \
                    training, blue: less; one symmetric scale for the whole figure. The mass \
                    beyond each radius is in erf_mass.csv."
                .into();
        }
        let images = self
            .data
            .maps
            .iter()
            .flatten()
            .flatten()
            .map(|m| m.images)
            .collect::<std::collections::BTreeSet<_>>();
        format!(
            "Effective receptive field (RepLKNet's procedure) of the centre of the last feature \
             map, {} image(s) per map; each map scaled by its own maximum. Under each map, t: r_t \
             for t = 0.2, 0.3, 0.5, 0.99, where r_t is the smallest centred square holding more \
             than t of the total, as a fraction of the image (larger: wider ERF; –: not even \
             the largest centred square that fits does).",
            images
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("/")
        )
    }
}

impl Figure for Draw<'_> {
    fn size(&self) -> (u32, u32) {
        let (_, _, side) = self.geometry();
        let cell_h = side + style::CELL * 3;
        (
            style::COLUMN_PX,
            style::frame_height(style::COLUMN_PX, self.title, &self.caption())
                + style::LABEL * 2
                + cell_h * self.data.rows.len().max(1) as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let d = self.data;
        let (label_w, bar_w, side) = self.geometry();
        let body = style::frame(root, self.title, &self.caption())?;
        let (bw, _) = body.dim_in_pixel();
        let (grid, bar) = body.split_horizontally(bw - bar_w);
        let (head, cells) = grid.split_vertically(style::LABEL * 2);
        let (_, head) = head.split_horizontally(label_w);
        let centred = |size| {
            font(size).pos(text_anchor::Pos::new(
                text_anchor::HPos::Center,
                text_anchor::VPos::Center,
            ))
        };
        for (area, c) in head
            .split_evenly((1, d.cols.len().max(1)))
            .iter()
            .zip(&d.cols)
        {
            let (w, h) = area.dim_in_pixel();
            area.draw(&Text::new(
                col_label(c),
                (w as i32 / 2, h as i32 / 2),
                centred(style::LABEL),
            ))?;
        }
        for (r, row_area) in cells
            .split_evenly((d.rows.len().max(1), 1))
            .iter()
            .enumerate()
        {
            let (label, maps) = row_area.split_horizontally(label_w);
            let lines = style::wrap(&style::display(&d.rows[r]), 10);
            let line_h = style::LABEL as i32 * 5 / 4;
            let top = side as i32 / 2 - (lines.len() as i32 - 1) * line_h / 2;
            for (i, line) in lines.iter().enumerate() {
                label.draw(&Text::new(
                    line.clone(),
                    (label_w as i32 / 2, top + i as i32 * line_h),
                    centred(style::LABEL),
                ))?;
            }
            for (c, area) in maps
                .split_evenly((1, d.cols.len().max(1)))
                .iter()
                .enumerate()
            {
                let Some(m) = &d.maps[r][c] else {
                    let (w, _) = area.dim_in_pixel();
                    area.draw(&Text::new(
                        "no map",
                        (w as i32 / 2, side as i32 / 2),
                        centred(style::CELL),
                    ))?;
                    continue;
                };
                draw_map(area, m, side, self.change_scale.is_some())?;
                let (w, _) = area.dim_in_pixel();
                // "0.2: .103  0.3: .154" is about 10.5 font sizes wide: shrink the font where
                // the cells are narrow, so neighbouring captions never run into each other.
                let size = style::CELL.min((w as f64 / 11.5) as u32).max(12);
                for (k, ts) in [[0.2, 0.3], [0.5, 0.99]].iter().enumerate() {
                    area.draw(&Text::new(
                        ratio_text(m, ts),
                        (
                            w as i32 / 2,
                            side as i32 + 6 + (k as i32) * size as i32 * 5 / 4,
                        ),
                        font(size).pos(text_anchor::Pos::new(
                            text_anchor::HPos::Center,
                            text_anchor::VPos::Top,
                        )),
                    ))?;
                }
            }
        }
        match self.change_scale {
            Some(s) => colour_bar(&bar, -s, s, CHANGE_LABEL, style::diverging),
            None => colour_bar(&bar, 0.0, 1.0, COLOUR_LABEL, style::viridis),
        }
    }
}

/// One map alone, with its colour bar (`dka erf`'s `erf.png`).
pub struct MapFigure<'a> {
    pub map: &'a ErfMap,
    pub title: &'a str,
}

impl Figure for MapFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let caption = self.caption();
        (
            style::COLUMN_PX,
            style::frame_height(style::COLUMN_PX, self.title, &caption) + 760,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = style::frame(root, self.title, &self.caption())?;
        let (w, _) = body.dim_in_pixel();
        let (left, bar) = body.split_horizontally(w - 220);
        let (_, left) = left.split_vertically(20);
        draw_map(&left, self.map, 720, false)?;
        colour_bar(&bar, 0.0, 1.0, COLOUR_LABEL, style::viridis)
    }
}

impl MapFigure<'_> {
    fn caption(&self) -> String {
        let r: Vec<String> = self
            .map
            .ratios
            .iter()
            .map(|(t, r)| match r {
                Some(r) => format!("t = {t}: {r:.3}"),
                None => format!("t = {t}: –"),
            })
            .collect();
        format!(
            "High-contribution area ratio (smallest centred square holding more than t of the total, as a fraction of the {}×{} image): {}.",
            self.map.h,
            self.map.w,
            r.join(", ")
        )
    }
}
