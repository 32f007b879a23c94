//! The look every figure shares: page sizes (a paper column at 300 dpi), fonts, the palette
//! (one fixed colour per method, colour-blind safe), axis labels with units, and writing a
//! figure as PNG and SVG from one drawing routine.
//!
//! Text uses DejaVu Sans from the system's fonts; without it [`font_available`] is false and
//! the callers skip their figures with a warning (tables and CSVs are written regardless).
use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::path::{Path, PathBuf};

/// One paper column, 3.5 in at 300 dpi.
pub const COLUMN_PX: u32 = 1050;
/// Both columns of a two-column paper (7.16 in at 300 dpi), for figures with many bars.
pub const PAGE_PX: u32 = 2150;

/// Font sizes in pixels at 300 dpi (1 pt = 300/72 px): title 9 pt, axis labels 8 pt, tick
/// labels and legends 7 pt, captions 6.5 pt.
pub const TITLE: u32 = 38;
pub const LABEL: u32 = 33;
pub const TICK: u32 = 29;
pub const LEGEND: u32 = 29;
pub const CAPTION: u32 = 27;
/// Annotation inside heatmap cells.
pub const CELL: u32 = 27;

pub const FONT: &str = crate::util::fonts::FAMILY;

/// Whether the figures' font is there, and the warning when it is not ([`crate::util::fonts`]).
pub use crate::util::fonts::{available as font_available, missing_warning as no_font_warning};

pub fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// Okabe & Ito's colour-blind-safe palette, then Paul Tol's muted colours for more series.
pub const PALETTE: [RGBColor; 12] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(230, 159, 0),   // orange
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(117, 112, 179), // purple
    RGBColor(136, 34, 85),   // wine
    RGBColor(153, 153, 51),  // olive
    RGBColor(68, 170, 153),  // teal
    RGBColor(102, 102, 102), // grey
    RGBColor(221, 204, 119), // sand
    RGBColor(0, 0, 0),       // black
];
/// DKA, in every figure.
pub const DKA: RGBColor = RGBColor(213, 94, 0); // vermillion
/// The paper's numbers (markers beside our bars).
pub const PAPER: RGBColor = RGBColor(0, 0, 0);

/// A fixed colour per method (so a method looks the same in every figure), else the
/// palette's `i`-th colour.
pub fn color(label: &str, i: usize) -> RGBColor {
    let key = method_key(label);
    if key == "dka" {
        return DKA;
    }
    // The baselines in the paper's order (DKA has its own colour).
    match dka_baselines::NAMES.iter().position(|k| *k == key) {
        Some(p) => PALETTE[p],
        None => PALETTE[i % PALETTE.len()],
    }
}

/// The method a label names: its first word, lower case (`"DKA d6"` -> `dka`).
pub fn method_key(label: &str) -> String {
    label.split_whitespace().next().unwrap_or("").to_lowercase()
}

/// How a method or row label is shown in legends: the paper's short names for our method
/// names, other labels as they are.
pub fn display(label: &str) -> String {
    match label {
        "full" => "Full FT".into(),
        "linear" => "Linear probe".into(),
        "bitfit" => "BitFit".into(),
        "vpt" => "VPT".into(),
        "lora" => "LoRA".into(),
        "adapter" => "Adapter".into(),
        "adaptformer" => "AdaptFormer".into(),
        "convpass" => "Convpass".into(),
        "ciat" => "CIAT".into(),
        "aim" => "AIM".into(),
        "dka" => "DKA".into(),
        "large" => "large only".into(),
        "small" => "small only".into(),
        "both" => "both (DKA)".into(),
        other => other.into(),
    }
}

/// An axis of a grid as an axis title, with its unit.
pub fn axis_label(axis: &str) -> String {
    match axis {
        "fraction" => "training data (% of the pool)".into(),
        "dataset" => "dataset".into(),
        "method" => "method".into(),
        "draw" => "draw".into(),
        "optimizer.adapter_lr" => "adapter learning rate".into(),
        "optimizer.head_lr" => "head learning rate".into(),
        "optimizer.backbone_lr" => "backbone learning rate".into(),
        "method.large_kernel" => "large kernel size (px)".into(),
        "method.small_kernel" => "small kernel size (px)".into(),
        "method.d_hat" => "middle dimension d̂".into(),
        "method.branches" => "depthwise branches".into(),
        other => other.rsplit('.').next().unwrap_or(other).replace('_', " "),
    }
}

/// A metric as an axis title, in percent.
pub fn metric_label(metric: &str) -> String {
    format!("{} (%)", crate::config::metrics::metric_title(metric))
}

/// A dataset name as printed.
pub fn dataset_label(d: &str) -> String {
    match d {
        "covid" => "COVID".into(),
        "busi-cls" => "BUSI".into(),
        "busi-seg" => "BUSI seg.".into(),
        "isic2019" => "ISIC-2019".into(),
        "isic2018" => "ISIC-2018".into(),
        "brats" => "BraTS".into(),
        "mni152" => "MNI152".into(),
        "mni152-slab" => "MNI152 slab".into(),
        "colin27-gm-slab" => "Colin27 grey matter".into(),
        "folder" => "image folder".into(),
        other => other.into(),
    }
}

/// A column combination (`["busi-cls", "1.25%"]`) as a short label.
pub fn combo_label(axes: &[String], values: &[String]) -> String {
    axes.iter()
        .zip(values)
        .map(|(a, v)| {
            if a == "dataset" {
                dataset_label(v)
            } else {
                v.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A label as a number: `"1.25%"` -> 1.25, `"1e-3"` -> 0.001.
pub fn numeric(s: &str) -> Option<f64> {
    s.trim().trim_end_matches('%').parse().ok()
}

/// A count with an SI suffix: 1500 -> "1.5k", 2e6 -> "2M".
pub fn si(v: f64) -> String {
    let (d, s) = if v.abs() >= 1e9 {
        (1e9, "G")
    } else if v.abs() >= 1e6 {
        (1e6, "M")
    } else if v.abs() >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / d;
    let t = if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else if x.abs() < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    };
    format!("{t}{s}")
}

/// Text broken into lines of at most `width` characters (at spaces); a `\n` in `text` always
/// starts a new line (a title's subtitle).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    text.split('\n')
        .flat_map(|paragraph| wrap_paragraph(paragraph, width))
        .collect()
}

fn wrap_paragraph(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Characters of text at `size` px that fit in `px` pixels (DejaVu Sans averages ~0.47 em;
/// 0.5 leaves room for wide letters).
pub fn chars_in(px: u32, size: u32) -> usize {
    ((px as f64) / (size as f64 * 0.5)).floor().max(8.0) as usize
}

/// Height in pixels of `lines` lines of text at `size` (with a little room above).
pub fn text_height(lines: usize, size: u32) -> u32 {
    (lines as f64 * size as f64 * 1.25 + size as f64 * 0.3).ceil() as u32
}

/// A tick label of a value axis spanning `span`: no decimals once the span exceeds 5.
pub fn tick(v: f64, span: f64) -> String {
    if span.abs() > 5.0 {
        format!("{v:.0}")
    } else if span.abs() > 0.5 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `lines` (already wrapped) from the top-left of `area`, centred when `centre`.
pub fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[String],
    size: u32,
    centre: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    for (i, l) in lines.iter().enumerate() {
        let y = (i as f64 * size as f64 * 1.25) as i32 + (size as f64 * 0.3) as i32;
        let style = if centre {
            font(size).pos(text_anchor::Pos::new(
                text_anchor::HPos::Center,
                text_anchor::VPos::Top,
            ))
        } else {
            font(size)
        };
        let x = if centre { w as i32 / 2 } else { 10 };
        area.draw(&Text::new(l.clone(), (x, y), style))?;
    }
    Ok(())
}

/// A figure: a size and one drawing routine for any backend.
pub trait Figure {
    /// Width and height in pixels (at 300 dpi).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `stem.png` and `stem.svg`; returns the PNG's path. The PNG goes through a temporary
/// file, so a failed drawing never leaves half a figure behind.
pub fn save(fig: &impl Figure, stem: &Path) -> anyhow::Result<PathBuf> {
    let size = fig.size();
    let png = stem.with_extension("png");
    let tmp = stem.with_extension("partial.png");
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)?;
        fig.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &png).with_context(|| png.display().to_string())?;
    let svg = stem.with_extension("svg");
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        root.fill(&WHITE)?;
        fig.draw(&root)?;
        root.present()?;
    }
    crate::util::fs::write_atomic(&svg, text.as_bytes())?;
    Ok(png)
}

/// Splits `root` into a title band (wrapped `title`), the body and a caption band (wrapped
/// `caption`, may be empty); draws title and caption and returns the body.
pub fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    caption: &str,
) -> anyhow::Result<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    let (w, h) = root.dim_in_pixel();
    let t = wrap(title, chars_in(w - 20, TITLE));
    let c = wrap(caption, chars_in(w - 20, CAPTION));
    let th = text_height(t.len(), TITLE) + 8;
    let ch = if c.is_empty() {
        0
    } else {
        text_height(c.len(), CAPTION) + 10
    };
    let (top, rest) = root.split_vertically(th);
    let (body, bottom) = rest.split_vertically(h - th - ch);
    draw_lines(&top, &t, TITLE, true)?;
    if !c.is_empty() {
        draw_lines(&bottom, &c, CAPTION, false)?;
    }
    Ok(body)
}

/// The height a frame adds to a body for `title` and `caption` at width `w`.
pub fn frame_height(w: u32, title: &str, caption: &str) -> u32 {
    let t = wrap(title, chars_in(w - 20, TITLE)).len();
    let c = wrap(caption, chars_in(w - 20, CAPTION)).len();
    text_height(t, TITLE)
        + 8
        + if c == 0 {
            0
        } else {
            text_height(c, CAPTION) + 10
        }
}

/// Viridis (matplotlib's), by linear interpolation between 9 stops; `t` in [0, 1].
/// A diverging map for signed values scaled to [0, 1]: blue (0) through white (0.5) to red
/// (1), for changes around zero.
pub fn diverging(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let (blue, white, red) = (
        (33.0, 102.0, 172.0),
        (247.0, 247.0, 247.0),
        (178.0, 24.0, 43.0),
    );
    let mix = |a: (f64, f64, f64), b: (f64, f64, f64), u: f64| {
        RGBColor(
            (a.0 + (b.0 - a.0) * u).round() as u8,
            (a.1 + (b.1 - a.1) * u).round() as u8,
            (a.2 + (b.2 - a.2) * u).round() as u8,
        )
    };
    if t < 0.5 {
        mix(blue, white, t * 2.0)
    } else {
        mix(white, red, (t - 0.5) * 2.0)
    }
}

pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Black or white, whichever reads better on `c`.
pub fn ink_on(c: RGBColor) -> RGBColor {
    let l = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if l > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_numbers_and_wrapping() {
        assert_eq!(numeric("1.25%"), Some(1.25));
        assert_eq!(numeric("1e-3"), Some(0.001));
        assert_eq!(numeric("dka"), None);
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2e6), "2M");
        assert_eq!(si(30.0), "30");
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(method_key("DKA d6"), "dka");
        assert_eq!(color("DKA d6", 3), DKA);
        assert_eq!(color("lora", 0), color("LoRA r8", 7));
        assert_eq!(axis_label("method.large_kernel"), "large kernel size (px)");
        assert_eq!(axis_label("optimizer.warmup_epochs"), "warmup epochs");
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }
}
