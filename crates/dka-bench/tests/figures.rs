//! Every figure renders from CSVs alone into a temporary folder: each grid figure kind from a
//! `table.csv` + `runs.csv` written here, the ERF map grid from an `area_ratios.csv` and its
//! maps, and `dka plots`' redraw of a whole results tree. PNG at a paper column's width
//! (1050 px, 300 dpi) or the page's, and SVG. Without DejaVu Sans every figure is skipped.
//! `DKA_KEEP_FIGURES=DIR` keeps them (one sub-folder per test) to look at.
use dka_bench::config::figure::{FigureSpec, PlotKind};
use dka_bench::report::plots::{self, style};
use std::path::{Path, PathBuf};

/// A temporary folder, or `$DKA_KEEP_FIGURES/<name>` when set (kept).
fn workdir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("DKA_KEEP_FIGURES") {
        Some(keep) => {
            let p = PathBuf::from(keep).join(name);
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            (None, p)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

const TABLE_HEAD: &str = "mean,std,n,failed,paper,metric";

/// Writes `table.csv` (row axis, column axes, then the statistics) and `runs.csv` (one run per
/// draw, scores spread around the cell's mean) for `cells` = (row, column values, mean, paper).
fn grid_folder(
    dir: &Path,
    row_axis: &str,
    col_axes: &[&str],
    cells: &[(&str, Vec<&str>, f64, Option<f64>)],
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut table = format!("{row_axis},{},{TABLE_HEAD}\n", col_axes.join(","));
    let mut runs = format!(
        "id,status,draw,{row_axis},{},accuracy,trainable_params,info,error,finished_utc\n",
        col_axes.join(",")
    );
    for (i, (row, cols, mean, paper)) in cells.iter().enumerate() {
        table += &format!(
            "{row},{},{mean:.2},1.50,3,0,{},accuracy\n",
            cols.join(","),
            paper.map(|p| p.to_string()).unwrap_or_default()
        );
        for (d, delta) in [-1.5, 0.0, 1.5].iter().enumerate() {
            runs += &format!(
                "r{i}d{d},ok,{d},{row},{},{},{},{{}},,2026-01-01T00:00:0{d}Z\n",
                cols.join(","),
                (mean + delta) / 100.0,
                10_000 * (i + 1)
            );
        }
    }
    std::fs::write(dir.join("table.csv"), table).unwrap();
    std::fs::write(dir.join("runs.csv"), runs).unwrap();
}

fn spec(kind: PlotKind, row_axis: &str, col_axes: &[&str]) -> FigureSpec {
    FigureSpec {
        kind,
        title: format!("A {kind:?} figure — vit_quick.json, random init, 3 draw(s)"),
        subtitle: Some("The paper's setting: a test".into()),
        metric: "accuracy".into(),
        row_axis: row_axis.into(),
        col_axes: col_axes.iter().map(|s| s.to_string()).collect(),
    }
}

/// The PNG is `width` wide, not blank, and has an SVG twin.
fn check(png: Option<PathBuf>, width: u32) {
    if !style::font_available() {
        assert!(png.is_none(), "without a font the figure is skipped");
        eprintln!("{}", style::no_font_warning("the figures"));
        return;
    }
    let png = png.expect("a figure");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.width(), width, "{}", png.display());
    assert!(img.height() > 400, "{}", png.display());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        inked > (img.width() * img.height()) as usize / 50,
        "{}: almost blank",
        png.display()
    );
    let svg = std::fs::read_to_string(png.with_extension("svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
}

fn methods_by_fraction(
    fractions: &[&'static str],
) -> Vec<(&'static str, Vec<&'static str>, f64, Option<f64>)> {
    let mut cells = Vec::new();
    for (i, f) in fractions.iter().enumerate() {
        for (j, m) in ["linear", "lora", "adapter", "dka"].iter().enumerate() {
            cells.push((
                *m,
                vec!["busi-cls", *f],
                50.0 + 5.0 * i as f64 + 3.0 * j as f64,
                None,
            ));
        }
    }
    cells
}

#[test]
fn tables_1_to_3_bars_with_the_papers_numbers() {
    let (_keep, d) = workdir("tables_1_to_3_bars_with_the_papers_numbers");
    let mut cells = methods_by_fraction(&["0.63%", "1.25%", "100%"]);
    for c in &mut cells {
        c.3 = Some(c.2 + 4.0);
    }
    cells.push(("dka", vec!["covid", "100%"], 97.0, Some(99.0)));
    grid_folder(d.as_path(), "method", &["dataset", "fraction"], &cells);
    let s = spec(PlotKind::Bars, "method", &["dataset", "fraction"]);
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

#[test]
fn figure_1_gain_over_linear_probing() {
    let (_keep, d) = workdir("figure_1_gain_over_linear_probing");
    let cells = methods_by_fraction(&["0.63%", "1.25%", "10%", "100%"]);
    grid_folder(d.as_path(), "method", &["dataset", "fraction"], &cells);
    let s = spec(PlotKind::Gain, "method", &["dataset", "fraction"]);
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

#[test]
fn figure_5_score_against_trainable_parameters() {
    let (_keep, d) = workdir("figure_5_score_against_trainable_parameters");
    let cells = methods_by_fraction(&["1.25%", "100%"]);
    grid_folder(d.as_path(), "method", &["dataset", "fraction"], &cells);
    let s = spec(PlotKind::Params, "method", &["dataset", "fraction"]);
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

#[test]
fn figure_7_learning_rate_heatmap() {
    let (_keep, d) = workdir("figure_7_learning_rate_heatmap");
    let mut cells = Vec::new();
    for (i, a) in ["0.05", "0.001", "0.0001"].iter().enumerate() {
        for (j, h) in ["0.001", "0.0001"].iter().enumerate() {
            cells.push((*a, vec![*h], 40.0 + 10.0 * i as f64 + 7.0 * j as f64, None));
        }
    }
    grid_folder(
        d.as_path(),
        "optimizer.adapter_lr",
        &["optimizer.head_lr"],
        &cells,
    );
    let s = spec(
        PlotKind::Heatmap,
        "optimizer.adapter_lr",
        &["optimizer.head_lr"],
    );
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

#[test]
fn figure_8_kernel_size_heatmap() {
    let (_keep, d) = workdir("figure_8_kernel_size_heatmap");
    let mut cells = Vec::new();
    for (i, l) in ["7", "15", "31", "51", "71"].iter().enumerate() {
        for (j, s) in ["3", "5", "7"].iter().enumerate() {
            cells.push((*l, vec![*s], 70.0 + i as f64 + 0.5 * j as f64, None));
        }
    }
    grid_folder(
        d.as_path(),
        "method.large_kernel",
        &["method.small_kernel"],
        &cells,
    );
    let s = spec(
        PlotKind::Kernels,
        "method.large_kernel",
        &["method.small_kernel"],
    );
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

#[test]
fn figure_9_single_and_dual_kernels() {
    let (_keep, d) = workdir("figure_9_single_and_dual_kernels");
    let mut cells = Vec::new();
    for ds in ["busi-cls", "covid"] {
        for f in ["0.63%", "100%"] {
            for (k, b) in ["large", "small", "both"].iter().enumerate() {
                cells.push((*b, vec![ds, f], 60.0 + 4.0 * k as f64, None));
            }
        }
    }
    grid_folder(
        d.as_path(),
        "method.branches",
        &["dataset", "fraction"],
        &cells,
    );
    let s = spec(
        PlotKind::Branches,
        "method.branches",
        &["dataset", "fraction"],
    );
    check(plots::draw_grid(d.as_path(), &s).unwrap(), style::COLUMN_PX);
}

/// An ERF folder: two methods × (init, two fractions), Gaussian-like maps of growing width.
fn erf_folder(dir: &Path) {
    let mut csv = "method,fraction,backbone,dataset,images,map,t,side,area_ratio\n".to_string();
    for (i, m) in ["adapter", "dka"].iter().enumerate() {
        for (j, f) in ["init", "1.25%", "100%"].iter().enumerate() {
            let map = format!("{m}_{j}");
            let sigma = 3.0 + 2.0 * i as f64 + j as f64;
            let v: Vec<f64> = (0..32 * 32)
                .map(|k| {
                    let (y, x) = ((k / 32) as f64 - 16.0, (k % 32) as f64 - 16.0);
                    1e3 * (-(x * x + y * y) / (2.0 * sigma * sigma)).exp()
                })
                .collect();
            let mean = tch::Tensor::from_slice(&v).view([32, 32]);
            let sum = &mean * 10.0;
            std::fs::create_dir_all(dir.join(&map)).unwrap();
            tch::Tensor::write_safetensors(
                &[("sum", sum), ("mean", mean)],
                dir.join(&map).join("erf.safetensors"),
            )
            .unwrap();
            for t in [0.2, 0.3, 0.5, 0.99] {
                csv += &format!(
                    "{m},{f},.assets/dinov2/config.json,mni152,10,{map},{t},5,{}\n",
                    0.02 * (1 + i + j) as f64
                );
            }
        }
    }
    std::fs::write(dir.join("area_ratios.csv"), csv).unwrap();
}

#[test]
fn figures_2_and_6_erf_map_grid() {
    let (_keep, d) = workdir("figures_2_and_6_erf_map_grid");
    erf_folder(d.as_path());
    let png = plots::draw_erf_grid(d.as_path()).unwrap();
    check(png, style::COLUMN_PX);
}

#[test]
fn plots_redraws_every_figure_under_a_results_folder() {
    let (_keep, d) = workdir("plots_redraws_every_figure_under_a_results_folder");
    let results = d.as_path();
    // A grid with figure.json, a grid folder's run subfolder that must be skipped, and an ERF
    // folder two levels down.
    let g = results.join("fig7-lr-grid-quick");
    let mut cells = Vec::new();
    for a in ["0.001", "0.0001"] {
        cells.push((a, vec!["0.001"], 50.0, None));
    }
    grid_folder(&g, "optimizer.adapter_lr", &["optimizer.head_lr"], &cells);
    let s = spec(
        PlotKind::Heatmap,
        "optimizer.adapter_lr",
        &["optimizer.head_lr"],
    );
    std::fs::write(g.join("figure.json"), serde_json::to_string(&s).unwrap()).unwrap();
    std::fs::create_dir_all(g.join("runs/abc")).unwrap();
    std::fs::write(g.join("runs/abc/table.csv"), "not,a,table\n").unwrap();
    erf_folder(&results.join("erf/demo"));
    let written = plots::redraw(results).unwrap();
    if !style::font_available() {
        assert!(written.is_empty());
        return;
    }
    assert_eq!(
        written,
        vec![results.join("erf/demo/erf_grid.png"), g.join("figure.png")]
    );
    // A broken folder is reported by name, the others still drawn.
    let bad = results.join("broken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("table.csv"), "method,mean\n").unwrap();
    std::fs::write(bad.join("figure.json"), "{}").unwrap();
    let e = plots::redraw(results).unwrap_err().to_string();
    assert!(e.contains("broken"), "{e}");
}
