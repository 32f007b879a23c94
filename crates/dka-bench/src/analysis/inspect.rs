//! `dka inspect`: what a trained run's inserted modules do, measured (does DKA use its large
//! kernel?).
//!
//! - On the run's test images (through the run's preprocessing), for every application of an
//!   inserted module ([`dka_core::probe`]): how much it changes what it is given,
//!   `‖f(x) − x‖ / ‖x‖` (a module on the token stream; `‖term‖ / ‖x‖` beside a residual
//!   branch; `‖delta‖ / ‖layer output‖` on a frozen layer), mean over images; for DKA also
//!   the norms of the large and the small branch's outputs and their ratio.
//! - For every DKA module, from its tensors: the share of the large kernel's energy `Σ K²` at
//!   Chebyshev radius > 2 (beyond the 5×5 branch's reach) and beyond the token grid's reach (a
//!   tap at radius ≥ the grid's side only ever meets padding), at initialisation (the run's
//!   seed rebuilds it) and trained.
//!
//! Writes `modules.csv` (one row per module application), `kernels.csv` (one row per DKA
//! module) and `summary.txt` into the output folder; a grid's runs go into one set of files,
//! with the runs' axes as columns.
use crate::config::record::{read_record, Status};
use crate::config::sources::Sources;
use crate::train::data::{loader, preprocess, to_device, Normalizer};
use crate::train::eval_data::EvalData;
use crate::train::trained::TrainedRun;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Run folders, or grid folders (their finished runs).
    pub paths: Vec<PathBuf>,
    /// Test images the activations are measured on (the first ones of the test split).
    pub images: usize,
    /// Output folder (default: `<run>/inspect`, or `<grid>/inspect`).
    pub out: Option<PathBuf>,
    /// A grid's runs are inspected when their axes match (runs named directly always are).
    pub filter: super::AxisFilter,
    pub sources: Sources,
}

/// One application of one module.
#[derive(Debug, Clone)]
pub struct ModuleRow {
    pub index: usize,
    pub site: String,
    /// Which application of this kind of site (the block, for one module per block and site).
    pub occurrence: usize,
    pub change: f64,
    pub large: Option<f64>,
    pub small: Option<f64>,
}

/// One DKA module's large kernel.
#[derive(Debug, Clone)]
pub struct KernelRow {
    pub module: String,
    pub size: i64,
    pub beyond_r2_init: f64,
    pub beyond_r2_trained: f64,
    /// The same within the taps that can meet data on the grid (radius ≤ grid side − 1): the
    /// taps beyond never get a gradient and keep their initial values.
    pub reach_r2_init: Option<f64>,
    pub reach_r2_trained: Option<f64>,
    /// Where training changed the kernel: the share of `Σ (K_trained − K_init)²` beyond
    /// radius 2 (within reach), and the radius whose ring changed most per tap.
    pub change_beyond_r2: f64,
    pub peak_change_radius: Option<i64>,
    pub beyond_grid_init: Option<f64>,
    pub beyond_grid_trained: Option<f64>,
}

/// Share of `Σ K²` (all channels) at Chebyshev radius > `r` of a `[c, 1, k, k]` kernel.
pub fn energy_beyond(kernel: &Tensor, r: i64) -> f64 {
    let k = kernel.size()[2];
    let c = k / 2;
    let sq = kernel
        .detach()
        .to_kind(Kind::Double)
        .square()
        .sum_dim_intlist([0, 1].as_slice(), false, Kind::Double);
    let total = sq.sum(Kind::Double).double_value(&[]);
    if total <= 0.0 {
        return f64::NAN;
    }
    let idx = Tensor::arange(k, (Kind::Int64, Device::Cpu)) - c;
    let ri = idx.abs().unsqueeze(1).expand([k, k], false);
    let rj = idx.abs().unsqueeze(0).expand([k, k], false);
    let cheb = ri.maximum(&rj);
    let far = cheb.gt(r).to_kind(Kind::Double);
    (sq.to_device(Device::Cpu) * far)
        .sum(Kind::Double)
        .double_value(&[])
        / total
}

/// The Chebyshev radius whose ring of taps holds the most energy per tap (`None`: all zero).
pub fn peak_radius(kernel: &Tensor) -> Option<i64> {
    let k = kernel.size()[2];
    let c = k / 2;
    let sq = kernel
        .detach()
        .to_kind(Kind::Double)
        .square()
        .sum_dim_intlist([0, 1].as_slice(), false, Kind::Double)
        .to_device(Device::Cpu);
    let v = Vec::<f64>::try_from(sq.view([-1])).ok()?;
    let mut ring = vec![(0.0, 0usize); (c + 1) as usize];
    for i in 0..k {
        for j in 0..k {
            let r = (i - c).abs().max((j - c).abs()) as usize;
            ring[r].0 += v[(i * k + j) as usize];
            ring[r].1 += 1;
        }
    }
    ring.iter()
        .enumerate()
        .map(|(r, (e, n))| (r as i64, e / *n as f64))
        .filter(|(_, e)| *e > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r)
}

/// The central `(2g − 1) × (2g − 1)` taps of a `[c, 1, k, k]` kernel (all of it when smaller).
fn reachable(kernel: &Tensor, g: i64) -> Tensor {
    let k = kernel.size()[2];
    let side = (2 * g - 1).min(k);
    let off = (k - side) / 2;
    kernel.narrow(2, off, side).narrow(3, off, side)
}

/// The large kernels of a run's DKA modules, initial and trained, by tensor name.
fn kernel_rows(
    init: &BTreeMap<String, Tensor>,
    trained: &tch::nn::VarStore,
    grid: Option<i64>,
) -> Vec<KernelRow> {
    trained
        .variables()
        .into_iter()
        .filter(|(n, _)| n.ends_with("conv_large.weight"))
        .filter_map(|(name, t)| {
            let i = init.get(&name)?;
            let delta = |g: Option<i64>| {
                let d = &t.detach().to_device(Device::Cpu) - &i.to_device(Device::Cpu);
                match g {
                    Some(g) => reachable(&d, g),
                    None => d,
                }
            };
            Some(KernelRow {
                change_beyond_r2: energy_beyond(&delta(grid), 2),
                peak_change_radius: peak_radius(&delta(grid)),
                module: name.trim_end_matches(".conv_large.weight").to_string(),
                size: t.size()[2],
                beyond_r2_init: energy_beyond(i, 2),
                beyond_r2_trained: energy_beyond(&t, 2),
                reach_r2_init: grid.map(|g| energy_beyond(&reachable(i, g), 2)),
                reach_r2_trained: grid.map(|g| energy_beyond(&reachable(&t, g), 2)),
                beyond_grid_init: grid.map(|g| energy_beyond(i, g - 1)),
                beyond_grid_trained: grid.map(|g| energy_beyond(&t, g - 1)),
            })
        })
        .collect()
}

/// The module applications of `run` on its first `images` test images.
fn module_rows(
    run: &TrainedRun,
    sources: &Sources,
    images: usize,
    device: Device,
) -> anyhow::Result<(Vec<ModuleRow>, Option<i64>)> {
    let cfg = &run.cfg;
    let data = EvalData::open(
        cfg,
        &run.task,
        &run.manifest_sha256,
        &cfg.dataset,
        &sources.root(&cfg.dataset)?,
        &sources.cache_dir(),
        Some(dka_data::SplitName::Test),
    )?;
    let spec = cfg.input_spec()?;
    let split = data.decoded(&preprocess(cfg, &spec), cfg.loader_threads.max(1))?;
    let n = images.min(split.len());
    let normalizer = Normalizer::new(&spec, device);
    let pad = spec.resize == dka_core::input::ResizeMode::LongestSidePad;
    let mut sums: Vec<(String, Vec<f64>, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut grid = None;
    for b in loader(&split, (0..n).collect(), None, cfg, 0)? {
        let b = b.context("test batch")?;
        let (x, _, valid) = to_device(&b, &split, pad, device);
        let x = normalizer.apply(&x, valid.as_ref());
        dka_core::probe::start();
        let f = tch::no_grad(|| run.model.backbone.forward_features(&x, false));
        let records = dka_core::probe::finish();
        if let Some(l) = f.layout {
            grid = Some(l.h.max(l.w));
        }
        // DKA's own maps (any backbone): the largest any module ran on bounds every reach.
        if let Some(g) = records
            .iter()
            .filter_map(|r| r.grid)
            .map(|(h, w)| h.max(w))
            .max()
        {
            grid = Some(grid.map_or(g, |x: i64| x.max(g)));
        }
        if sums.is_empty() {
            sums = records
                .iter()
                .map(|r| (r.site.to_string(), Vec::new(), Vec::new(), Vec::new()))
                .collect();
        }
        anyhow::ensure!(
            records.len() == sums.len(),
            "the modules ran {} times on one batch and {} on another",
            sums.len(),
            records.len()
        );
        for (s, r) in sums.iter_mut().zip(records) {
            s.1.extend(r.change);
            if let Some((l, sm)) = r.branches {
                s.2.extend(l);
                s.3.extend(sm);
            }
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let rows = sums
        .into_iter()
        .enumerate()
        .map(|(i, (site, change, large, small))| {
            let occ = seen.entry(site.clone()).or_insert(0);
            let row = ModuleRow {
                index: i,
                occurrence: *occ,
                change: mean(&change).unwrap_or(f64::NAN),
                large: mean(&large),
                small: mean(&small),
                site,
            };
            *occ += 1;
            row
        })
        .collect();
    Ok((rows, grid))
}

/// The runs under `path`: itself when it is a run folder, else a grid's finished runs with
/// their axes.
fn runs_of(
    path: &Path,
    filter: &super::AxisFilter,
) -> anyhow::Result<Vec<(PathBuf, BTreeMap<String, String>)>> {
    if path.join("config.json").is_file() {
        return Ok(vec![(path.to_path_buf(), BTreeMap::new())]);
    }
    let runs = path.join("runs");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&runs)
        .with_context(|| format!("{}: neither a run folder nor a grid folder", path.display()))?;
    for e in entries.flatten() {
        if let Some(r) =
            read_record(&e.path()).filter(|r| r.status == Status::Ok && filter.matches(&r.axes))
        {
            out.push((e.path(), r.axes));
        }
    }
    out.sort();
    Ok(out)
}

fn cell(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.6}"))
        .unwrap_or_default()
}

/// Inspects every run; returns the folder written and the summary lines.
pub fn inspect(o: &InspectOptions, device: Device) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mut runs = Vec::new();
    for p in &o.paths {
        runs.extend(runs_of(p, &o.filter)?);
    }
    anyhow::ensure!(
        !runs.is_empty(),
        "no finished run to inspect (a grid's runs count when their axes match every --where)"
    );
    let out = o.out.clone().unwrap_or_else(|| o.paths[0].join("inspect"));
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let axes: Vec<String> = {
        let mut a: Vec<String> = runs.iter().flat_map(|(_, ax)| ax.keys().cloned()).collect();
        a.sort();
        a.dedup();
        a
    };
    let mut modules = csv::Writer::from_path(out.join("modules.csv"))?;
    let mut kernels = csv::Writer::from_path(out.join("kernels.csv"))?;
    let mut head = vec!["run".to_string(), "method".to_string()];
    // `method` is the method's name (also for a run outside a grid); a grid's `method` axis
    // (its label, e.g. "DKA, small only (5x5)") goes into `method_label`.
    head.extend(axes.iter().map(|a| match a.as_str() {
        "method" => "method_label".to_string(),
        _ => a.clone(),
    }));
    let mut mh = head.clone();
    mh.extend(
        [
            "index",
            "site",
            "occurrence",
            "change_ratio",
            "large_norm",
            "small_norm",
            "large_over_small",
        ]
        .map(String::from),
    );
    modules.write_record(&mh)?;
    let mut kh = head.clone();
    kh.extend(
        [
            "module",
            "kernel",
            "energy_beyond_r2_init",
            "energy_beyond_r2_trained",
            "reachable_beyond_r2_init",
            "reachable_beyond_r2_trained",
            "change_beyond_r2",
            "peak_change_radius",
            "energy_beyond_grid_init",
            "energy_beyond_grid_trained",
        ]
        .map(String::from),
    );
    kernels.write_record(&kh)?;
    let mut summary = Vec::new();
    let bar = crate::util::progress::bar(runs.len() as u64, "inspecting");
    for (dir, ax) in &runs {
        let run = TrainedRun::open_with(dir, device, |cfg| o.sources.resolve(cfg))?;
        let method = run.cfg.method.method().name().to_string();
        let (rows, grid) = module_rows(&run, &o.sources, o.images, device)
            .with_context(|| format!("inspecting {}", dir.display()))?;
        let krows = kernel_rows(&run.init_adapter, &run.model.adapter_vs, grid);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut lead = vec![name.clone(), method.clone()];
        lead.extend(axes.iter().map(|a| ax.get(a).cloned().unwrap_or_default()));
        for r in &rows {
            let mut rec = lead.clone();
            rec.extend([
                r.index.to_string(),
                r.site.clone(),
                r.occurrence.to_string(),
                cell(Some(r.change)),
                cell(r.large),
                cell(r.small),
                cell(r.large.zip(r.small).map(|(l, s)| l / s)),
            ]);
            modules.write_record(&rec)?;
        }
        for k in &krows {
            let mut rec = lead.clone();
            rec.extend([
                k.module.clone(),
                format!("{0}x{0}", k.size),
                cell(Some(k.beyond_r2_init)),
                cell(Some(k.beyond_r2_trained)),
                cell(k.reach_r2_init),
                cell(k.reach_r2_trained),
                cell(Some(k.change_beyond_r2)),
                k.peak_change_radius
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                cell(k.beyond_grid_init),
                cell(k.beyond_grid_trained),
            ]);
            kernels.write_record(&rec)?;
        }
        let mean = |v: Vec<f64>| {
            let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let change = mean(rows.iter().map(|r| r.change).collect());
        let ratio = mean(
            rows.iter()
                .filter_map(|r| r.large.zip(r.small).map(|(l, s)| l / s))
                .collect(),
        );
        let (e0, e1) = (
            mean(krows.iter().map(|k| k.beyond_r2_init).collect()),
            mean(krows.iter().map(|k| k.beyond_r2_trained).collect()),
        );
        let (r0, r1) = (
            mean(krows.iter().filter_map(|k| k.reach_r2_init).collect()),
            mean(krows.iter().filter_map(|k| k.reach_r2_trained).collect()),
        );
        let about = if ax.is_empty() {
            String::new()
        } else {
            format!(" {ax:?}")
        };
        let mut line = format!(
            "{name} ({method}{about}): {} module applications, mean ‖f(x) − x‖/‖x‖ {}",
            rows.len(),
            change.map_or("-".into(), |v| format!("{v:.4}"))
        );
        if let Some(r) = ratio {
            line += &format!(", large/small branch output norm {r:.3}");
        }
        if let (Some(a), Some(b)) = (e0, e1) {
            line += &format!(
                ", large kernel energy beyond radius 2: {:.1} % at init, {:.1} % trained",
                100.0 * a,
                100.0 * b
            );
        }
        let moved = mean(krows.iter().map(|k| k.change_beyond_r2).collect());
        let peaks: Vec<String> = krows
            .iter()
            .filter_map(|k| k.peak_change_radius.map(|r| r.to_string()))
            .collect();
        if let Some(m) = moved {
            line += &format!(
                "; training changed the large kernels {:.1} % beyond radius 2, most at radius {}",
                100.0 * m,
                peaks.join("/")
            );
        }
        if let (Some(a), Some(b), Some(g)) = (r0, r1, grid) {
            line += &format!(
                " (within the {0}×{0} taps a {1}×{1} map can reach: {2:.1} % → {3:.1} %)",
                2 * g - 1,
                g,
                100.0 * a,
                100.0 * b
            );
        }
        summary.push(line);
        bar.inc(1);
    }
    crate::util::progress::done(&bar);
    modules.flush()?;
    kernels.flush()?;
    std::fs::write(out.join("summary.txt"), summary.join("\n") + "\n")?;
    Ok((out, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_radius_is_the_ring_with_most_energy_per_tap() {
        let mut k = vec![0f32; 49];
        k[3 * 7 + 3] = 1.0; // centre, radius 0: 1 per tap
        k[3 * 7 + 6] = 2.0; // radius 3: 4 over 24 taps
        let t = Tensor::from_slice(&k).view([1, 1, 7, 7]);
        assert_eq!(peak_radius(&t), Some(0));
        let mut k = vec![0f32; 49];
        k[3 * 7 + 6] = 2.0;
        let t = Tensor::from_slice(&k).view([1, 1, 7, 7]);
        assert_eq!(peak_radius(&t), Some(3));
    }

    #[test]
    fn kernel_energy_by_chebyshev_radius() {
        // A 7x7 kernel: 1 at the centre, 1 at radius 3 (a corner): half the energy beyond 2.
        let mut k = vec![0f32; 49];
        k[3 * 7 + 3] = 1.0;
        k[0] = 1.0;
        let t = Tensor::from_slice(&k).view([1, 1, 7, 7]);
        assert!((energy_beyond(&t, 2) - 0.5).abs() < 1e-12);
        assert!((energy_beyond(&t, 0) - 0.5).abs() < 1e-12);
        assert_eq!(energy_beyond(&t, 3), 0.0);
        // A 5x5 kernel has nothing beyond radius 2.
        let t = Tensor::ones([2, 1, 5, 5], (Kind::Float, Device::Cpu));
        assert_eq!(energy_beyond(&t, 2), 0.0);
    }
}
