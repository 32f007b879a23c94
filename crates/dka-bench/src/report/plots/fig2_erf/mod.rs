//! Figures 2 and 6: effective receptive fields as a grid of maps, methods (rows) × training-data
//! fractions (columns, "init" first: the method at initialisation), each map RepLKNet's
//! `log10(x + 1)` of the mean contribution scores scaled to [0, 1] by its own maximum, with its
//! high-contribution area ratios at t = 0.2 and 0.99 under it; and one map alone (`dka erf`'s
//! `erf.png`).
//!
//! Read from an ERF folder (`dka erf --grid ... --out DIR`): `area_ratios.csv` (one row per map
//! and threshold, by column name) and each map's `erf.safetensors` (tensors `sum`, `mean`).
use super::style::{self};
use super::tables::order;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One row of `area_ratios.csv` (and of a map's `erf.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatioRow {
    /// The method's label (the grid's axis label, or the method name).
    pub method: String,
    /// The training-data fraction, or `init` for the method at initialisation.
    pub fraction: String,
    pub backbone: String,
    /// The dataset whose images the map averages over.
    pub dataset: String,
    /// Images averaged over.
    pub images: usize,
    /// The map's folder, relative to the CSV's folder.
    pub map: String,
    pub t: f64,
    /// Side of the smallest centred square holding more than `t` of the total (pixels).
    pub side: Option<i64>,
    /// `(side / H) · (side / W)`.
    pub area_ratio: Option<f64>,
}

/// A map of mean contribution scores `[h, w]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub h: usize,
    pub w: usize,
    pub values: Vec<f64>,
}

/// One map as drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct ErfMap {
    pub h: usize,
    pub w: usize,
    /// `log10(x + 1)` scaled to [0, 1] by its maximum, row-major.
    pub values: Vec<f64>,
    /// (t, area ratio) in threshold order.
    pub ratios: Vec<(f64, Option<f64>)>,
    pub images: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErfGrid {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub maps: Vec<Vec<Option<ErfMap>>>,
    pub backbone: String,
    pub dataset: String,
}

/// RepLKNet's `log10(x + 1) / max` (zeros stay zeros); the same as
/// `dka_core::erf::normalised_log_map`.
pub fn normalised_log(values: &[f64]) -> Vec<f64> {
    let l: Vec<f64> = values.iter().map(|x| (x + 1.0).log10()).collect();
    let max = l.iter().cloned().fold(0.0f64, f64::max);
    if max > 0.0 {
        l.iter().map(|x| x / max).collect()
    } else {
        l
    }
}

/// Reads an ERF folder: its `area_ratios.csv` rows and each map's mean scores.
pub fn load(dir: &Path) -> anyhow::Result<(Vec<RatioRow>, BTreeMap<String, Scores>)> {
    let csv_path = dir.join("area_ratios.csv");
    let mut r =
        csv::Reader::from_path(&csv_path).with_context(|| csv_path.display().to_string())?;
    let rows: Vec<RatioRow> = r
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| csv_path.display().to_string())?;
    let mut maps = BTreeMap::new();
    for m in order(rows.iter().map(|r| r.map.clone())) {
        maps.insert(
            m.clone(),
            read_scores(&dir.join(&m).join("erf.safetensors"))?,
        );
    }
    Ok((rows, maps))
}

/// The `mean` tensor of an `erf.safetensors`.
pub fn read_scores(path: &Path) -> anyhow::Result<Scores> {
    let t = tch::Tensor::read_safetensors(path)
        .with_context(|| path.display().to_string())?
        .into_iter()
        .find_map(|(n, t)| (n == "mean").then_some(t))
        .with_context(|| format!("{}: no tensor 'mean'", path.display()))?;
    let (h, w) = t
        .size2()
        .with_context(|| format!("{}: 'mean' is not [H, W]", path.display()))?;
    let values = Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).contiguous().view([-1]))?;
    Ok(Scores {
        h: h as usize,
        w: w as usize,
        values,
    })
}

/// Rows in the paper's order (Adapter, LoRA, Convpass, then DKA last), columns `init` first
/// then by fraction.
pub fn data(rows: &[RatioRow], scores: &BTreeMap<String, Scores>) -> ErfGrid {
    let rank = |m: &String| match style::method_key(m).as_str() {
        "adapter" => 0,
        "lora" => 1,
        "convpass" => 2,
        "dka" => 9,
        _ => 5,
    };
    let mut methods = order(rows.iter().map(|r| r.method.clone()));
    methods.sort_by_key(rank);
    let mut cols = order(rows.iter().map(|r| r.fraction.clone()));
    cols.sort_by(|a, b| {
        let k = |s: &String| style::numeric(s).unwrap_or(-1.0);
        k(a).total_cmp(&k(b))
    });
    let maps = methods
        .iter()
        .map(|m| {
            cols.iter()
                .map(|f| {
                    let mine: Vec<&RatioRow> = rows
                        .iter()
                        .filter(|r| &r.method == m && &r.fraction == f)
                        .collect();
                    let first = mine.first()?;
                    let s = scores.get(&first.map)?;
                    Some(ErfMap {
                        h: s.h,
                        w: s.w,
                        values: normalised_log(&s.values),
                        ratios: mine.iter().map(|r| (r.t, r.area_ratio)).collect(),
                        images: first.images,
                    })
                })
                .collect()
        })
        .collect();
    ErfGrid {
        backbone: rows.first().map(|r| r.backbone.clone()).unwrap_or_default(),
        dataset: rows.first().map(|r| r.dataset.clone()).unwrap_or_default(),
        rows: methods,
        cols,
        maps,
    }
}

/// `values` as shares of their total.
fn shares(values: &[f64]) -> Vec<f64> {
    let total: f64 = values.iter().sum();
    values
        .iter()
        .map(|v| if total > 0.0 { v / total } else { 0.0 })
        .collect()
}

/// The change maps: for every method with a map at initialisation, each trained map minus it
/// (both as shares of their totals), scaled to [0, 1] by one symmetric scale `s` (returned:
/// the largest |change|); columns are the trained fractions. `None` without an initial map.
pub fn change_data(rows: &[RatioRow], scores: &BTreeMap<String, Scores>) -> Option<(ErfGrid, f64)> {
    let grid = data(rows, scores);
    let init = grid.cols.iter().position(|c| c == "init")?;
    let cols: Vec<usize> = (0..grid.cols.len()).filter(|&c| c != init).collect();
    let raw = |r: usize, c: usize| -> Option<(usize, usize, Vec<f64>)> {
        let m = &grid.rows[r];
        let find = |f: &str| {
            let row = rows.iter().find(|x| &x.method == m && x.fraction == f)?;
            scores.get(&row.map)
        };
        let (a, b) = (find(&grid.cols[c])?, find("init")?);
        if (a.h, a.w) != (b.h, b.w) {
            return None;
        }
        let (sa, sb) = (shares(&a.values), shares(&b.values));
        // In units of a uniform map's pixel (1 / (h w)): +1 is a pixel gaining as much weight
        // as every pixel would hold if the field were flat.
        let n = (a.h * a.w) as f64;
        Some((
            a.h,
            a.w,
            sa.iter().zip(&sb).map(|(x, y)| (x - y) * n).collect(),
        ))
    };
    let changes: Vec<Vec<Option<(usize, usize, Vec<f64>)>>> = (0..grid.rows.len())
        .map(|r| cols.iter().map(|&c| raw(r, c)).collect())
        .collect();
    let scale = changes
        .iter()
        .flatten()
        .flatten()
        .flat_map(|(_, _, v)| v.iter().map(|x| x.abs()))
        .fold(0.0f64, f64::max);
    if scale <= 0.0 {
        return None;
    }
    let maps = changes
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|m| {
                    m.map(|(h, w, v)| ErfMap {
                        h,
                        w,
                        values: v.iter().map(|x| (x / scale + 1.0) / 2.0).collect(),
                        ratios: Vec::new(),
                        images: 0,
                    })
                })
                .collect()
        })
        .collect();
    Some((
        ErfGrid {
            cols: cols.iter().map(|&c| grid.cols[c].clone()).collect(),
            maps,
            ..grid
        },
        scale,
    ))
}

/// One row of `erf_mass.csv`: the share of a map's total beyond Chebyshev radius `radius`
/// (outside the centred square of side `2 radius + 1`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MassRow {
    pub map: String,
    pub method: String,
    pub fraction: String,
    pub radius: usize,
    pub mass_beyond: f64,
}

/// The mass beyond every radius of every map (radius in pixels from the map's centre).
pub fn mass_rows(rows: &[RatioRow], scores: &BTreeMap<String, Scores>) -> Vec<MassRow> {
    let mut out = Vec::new();
    for m in order(rows.iter().map(|r| r.map.clone())) {
        let (Some(row), Some(s)) = (rows.iter().find(|r| r.map == m), scores.get(&m)) else {
            continue;
        };
        let total: f64 = s.values.iter().sum();
        let (cy, cx) = (s.h / 2, s.w / 2);
        for radius in 0..=(s.h.min(s.w) / 2) {
            let mut inside = 0.0;
            for y in cy.saturating_sub(radius)..=(cy + radius).min(s.h - 1) {
                for x in cx.saturating_sub(radius)..=(cx + radius).min(s.w - 1) {
                    inside += s.values[y * s.w + x];
                }
            }
            out.push(MassRow {
                map: m.clone(),
                method: row.method.clone(),
                fraction: row.fraction.clone(),
                radius,
                mass_beyond: if total > 0.0 {
                    1.0 - inside / total
                } else {
                    f64::NAN
                },
            });
        }
    }
    out
}

mod draw;

pub use draw::{Draw, MapFigure};

#[cfg(test)]
mod tests {

    #[test]
    fn change_maps_subtract_the_initial_shares_and_mass_counts_rings() {
        // 3x3 maps: init flat, trained all at the centre.
        let rows = vec![
            row("DKA", "init", "dka_init", 0.2, None),
            row("DKA", "8%", "dka_8pct", 0.2, None),
        ];
        let flat = Scores {
            h: 3,
            w: 3,
            values: vec![1.0; 9],
        };
        let mut centre = vec![0.0; 9];
        centre[4] = 5.0;
        let peaked = Scores {
            h: 3,
            w: 3,
            values: centre,
        };
        let scores = BTreeMap::from([
            ("dka_init".to_string(), flat),
            ("dka_8pct".to_string(), peaked),
        ]);
        let (g, scale) = change_data(&rows, &scores).unwrap();
        assert_eq!(g.cols, ["8%"]);
        // Centre: (1 - 1/9) * 9 = 8 flat pixels' worth gained; elsewhere -1 each.
        assert!((scale - 8.0).abs() < 1e-12);
        let m = g.maps[0][0].as_ref().unwrap();
        assert!((m.values[4] - 1.0).abs() < 1e-12);
        assert!((m.values[0] - (1.0 - 1.0 / 8.0) / 2.0).abs() < 1e-12);
        let mass = mass_rows(&rows, &scores);
        let init: Vec<f64> = mass
            .iter()
            .filter(|r| r.fraction == "init")
            .map(|r| r.mass_beyond)
            .collect();
        assert_eq!(init.len(), 2, "radius 0 and 1");
        assert!((init[0] - 8.0 / 9.0).abs() < 1e-12);
        assert!(init[1].abs() < 1e-12);
        assert!(mass
            .iter()
            .filter(|r| r.fraction == "8%")
            .all(|r| r.mass_beyond.abs() < 1e-12));
    }

    use super::draw::ratio_text;
    use super::*;

    fn row(method: &str, fraction: &str, map: &str, t: f64, r: Option<f64>) -> RatioRow {
        RatioRow {
            method: method.into(),
            fraction: fraction.into(),
            backbone: "b".into(),
            dataset: "d".into(),
            images: 5,
            map: map.into(),
            t,
            side: r.map(|_| 3),
            area_ratio: r,
        }
    }

    #[test]
    fn the_log_map_matches_the_libraries() {
        let v = vec![0.0, 1.0, 9.0, 99.0];
        let t = tch::Tensor::from_slice(&v).view([2, 2]);
        let lib = Vec::<f64>::try_from(
            dka_core::erf::normalised_log_map(&t)
                .contiguous()
                .view([-1]),
        )
        .unwrap();
        let ours = normalised_log(&v);
        for (a, b) in ours.iter().zip(&lib) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!((ours[0], ours[2], ours[3]), (0.0, 0.5, 1.0));
        assert!((ours[1] - 2f64.log10() / 2.0).abs() < 1e-15);
        assert_eq!(normalised_log(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn methods_by_rows_fractions_by_columns_init_first_dka_last() {
        let rows = vec![
            row("dka", "1.25%", "dka_1", 0.2, Some(0.1)),
            row("dka", "1.25%", "dka_1", 0.99, Some(0.9)),
            row("adapter", "100%", "ad_100", 0.2, None),
            row("adapter", "init", "ad_init", 0.2, Some(0.05)),
        ];
        let s = |v: f64| Scores {
            h: 1,
            w: 2,
            values: vec![0.0, v],
        };
        let scores: BTreeMap<String, Scores> = [
            ("dka_1".to_string(), s(9.0)),
            ("ad_100".to_string(), s(99.0)),
            ("ad_init".to_string(), s(0.0)),
        ]
        .into_iter()
        .collect();
        let g = data(&rows, &scores);
        assert_eq!(g.rows, ["adapter", "dka"]);
        assert_eq!(g.cols, ["init", "1.25%", "100%"]);
        assert!(g.maps[1][0].is_none(), "no dka map at init");
        let m = g.maps[1][1].as_ref().unwrap();
        assert_eq!(m.values, vec![0.0, 1.0]);
        assert_eq!(m.ratios, vec![(0.2, Some(0.1)), (0.99, Some(0.9))]);
        assert_eq!(ratio_text(m, &[0.2, 0.99]), "0.2: .100  0.99: .900");
        assert_eq!(g.maps[0][0].as_ref().unwrap().values, vec![0.0, 0.0]);
        assert_eq!(
            ratio_text(g.maps[0][2].as_ref().unwrap(), &[0.2, 0.3]),
            "0.2: –"
        );
    }
}
