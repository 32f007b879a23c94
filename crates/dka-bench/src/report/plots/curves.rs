//! A run's training curves, `RUN/curves.png` (and `.svg`), from its `metrics.csv`: the losses
//! per epoch (train; validation and test where evaluated) on the left, the paper's metric
//! (validation and test where evaluated) on the right. nnU-Net's `progress.png` for one run.
use super::style::{self, font, Figure};
use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One line: its label, colour and (epoch from 1, value) points.
pub struct Curve {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// The two panels of a run's curves.
pub struct Curves {
    pub title: String,
    pub losses: Vec<Curve>,
    pub metric: String,
    pub metrics: Vec<Curve>,
    pub epochs: usize,
}

/// The curves in `metrics.csv` (read by column name).
pub fn data(run: &Path) -> anyhow::Result<Curves> {
    let path = run.join("metrics.csv");
    let mut r = csv::Reader::from_path(&path).with_context(|| path.display().to_string())?;
    let header: Vec<String> = r.headers()?.iter().map(String::from).collect();
    let rows: Vec<csv::StringRecord> = r
        .records()
        .collect::<Result<_, _>>()
        .with_context(|| path.display().to_string())?;
    anyhow::ensure!(
        !rows.is_empty(),
        "{}: no finished epoch yet",
        path.display()
    );
    let col = |name: &str| header.iter().position(|h| h == name);
    let series = |name: &str| -> Vec<(f64, f64)> {
        let Some(c) = col(name) else {
            return Vec::new();
        };
        rows.iter()
            .filter_map(|row| {
                let e: f64 = row.get(0)?.parse().ok()?;
                let v: f64 = row.get(c)?.parse().ok()?;
                v.is_finite().then_some((e + 1.0, v))
            })
            .collect()
    };
    let segmentation = col("test_miou_foreground").is_some();
    let metric = crate::config::metrics::primary_metric(segmentation);
    let curve = |label: &str, color: RGBColor, name: &str| Curve {
        label: label.into(),
        color,
        points: series(name),
    };
    // Metrics in percent, as the tables print them.
    let percent = |mut c: Curve| {
        c.points.iter_mut().for_each(|p| p.1 *= 100.0);
        c
    };
    let (train, val, test) = (style::PALETTE[0], style::PALETTE[1], style::DKA);
    let losses: Vec<Curve> = vec![
        curve("train", train, "train_loss"),
        curve("validation", val, "val_loss"),
        curve("test", test, "test_loss"),
    ]
    .into_iter()
    .filter(|c| !c.points.is_empty())
    .collect();
    let metrics: Vec<Curve> = vec![
        curve("validation", val, &format!("val_{metric}")),
        curve("test", test, &format!("test_{metric}")),
    ]
    .into_iter()
    .map(percent)
    .filter(|c| !c.points.is_empty())
    .collect();
    let name = run
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let cfg: Option<serde_json::Value> = std::fs::read_to_string(run.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let about = cfg
        .map(|c| {
            format!(
                " — {} on {}, {}",
                c["method"]["name"].as_str().unwrap_or("?"),
                c["dataset"].as_str().unwrap_or("?"),
                c["backbone"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    Ok(Curves {
        title: format!("{name}{about}"),
        losses,
        metric: style::metric_label(metric),
        metrics,
        epochs: rows.len(),
    })
}

fn range(curves: &[Curve]) -> (f64, f64) {
    let vals = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

impl Curves {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        curves: &[Curve],
        y_desc: &str,
        title: &str,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (y0, y1) = range(curves);
        let x1 = self.epochs.max(2) as f64;
        let mut ch = ChartBuilder::on(area)
            .margin(14)
            .margin_right(36)
            .caption(title, font(style::LABEL))
            .x_label_area_size(style::TICK + style::LABEL + 30)
            .y_label_area_size(style::LABEL * 2 + 50)
            .build_cartesian_2d(0.5..x1 + 0.5, y0..y1)?;
        ch.configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_labels(8)
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_labels(6)
            .y_label_formatter(&|v| style::tick(*v, y1 - y0))
            .x_desc("epoch")
            .y_desc(y_desc)
            .label_style(font(style::TICK))
            .axis_desc_style(font(style::LABEL))
            .draw()?;
        for c in curves {
            let color = c.color;
            let s = ch.draw_series(LineSeries::new(c.points.clone(), color.stroke_width(3)))?;
            s.label(c.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(4))
            });
            ch.draw_series(c.points.iter().map(|&p| Circle::new(p, 6, color.filled())))?;
        }
        if !curves.is_empty() {
            ch.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(font(style::LEGEND))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        Ok(())
    }
}

const CAPTION: &str = "Per epoch, from metrics.csv. Validation and test points appear only \
     on the epochs where they were evaluated (the selection rule and test_every decide).";

impl Figure for Curves {
    fn size(&self) -> (u32, u32) {
        let body = 900;
        (
            style::PAGE_PX,
            body + style::frame_height(style::PAGE_PX, &self.title, CAPTION),
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let body = style::frame(root, &self.title, CAPTION)?;
        let (w, _) = body.dim_in_pixel();
        let (left, right) = body.split_horizontally(w / 2);
        self.panel(&left, &self.losses, "loss", "loss")?;
        self.panel(&right, &self.metrics, &self.metric, &self.metric)?;
        Ok(())
    }
}

/// Draws `run/curves.png` and `.svg`; returns the PNG's path.
pub fn draw(run: &Path) -> anyhow::Result<PathBuf> {
    let c = data(run)?;
    anyhow::ensure!(
        style::font_available(),
        "{}",
        style::no_font_warning(&run.join("curves.png").display().to_string())
    );
    style::save(&c, &run.join("curves"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_come_from_metrics_csv_by_column_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("metrics.csv"),
            "epoch,train_loss,test_loss,test_accuracy,val_loss\n0,2.0,,,\n1,1.5,1.7,0.6,\n",
        )
        .unwrap();
        let c = data(d.path()).unwrap();
        assert_eq!(c.epochs, 2);
        assert_eq!(c.losses.len(), 2, "train and test; no validation values");
        assert_eq!(c.losses[0].points, [(1.0, 2.0), (2.0, 1.5)]);
        assert_eq!(c.losses[1].points, [(2.0, 1.7)]);
        assert_eq!(c.metrics[0].points, [(2.0, 60.0)]);
    }
}
