//! `dka erf`: the effective receptive field (ERF) of a backbone as a method leaves it, by
//! RepLKNet's procedure (`dka_core::erf`, METHODS.md): the gradient of the centre of the last
//! feature map with respect to the input, `relu`, summed over colour channels, averaged over
//! the test images of the run's split, preprocessed with the backbone's input convention.
//!
//! Three ways in:
//! - `--run DIR`: a trained run (its `config.json` gives backbone, weights, dataset and split;
//!   its `adapter/` the trained tensors);
//! - `--method NAME|JSON` with `--backbone`, `--weights`, `--dataset`: the method at
//!   initialisation;
//! - `--grid DIR`: every run of a grid whose method is in `--methods` (one draw), and with
//!   `--init` each of those methods at initialisation (same config, nothing loaded): one
//!   folder per map, `area_ratios.csv` over all maps, and the map grid `erf_grid.png`
//!   (Figures 2 and 6).
//!
//! Each map's folder holds `erf.safetensors` (`sum` and `mean` of the scores, `[H, W]` f64),
//! `erf.csv` (the high-contribution area ratios at t = 0.2, 0.3, 0.5, 0.99, read from the
//! normalised log map of the mean, as RepLKNet's `analyze_erf.py`), `erf.json` (what was
//! measured) and `erf.png`/`.svg` (the heatmap with a colour bar).
use crate::config::record::{read_record, Status};
use crate::config::run::{Precision, RunConfig};
use crate::config::sources::Sources;
use crate::report::plots::fig2_erf::{self, ErfMap, RatioRow};
use crate::report::plots::{short_name, style};
use crate::train::data::{loader, manifest_of, preprocess, to_device, Normalizer, RunData};
use crate::train::model::Model;
use crate::util::device::pick;
use crate::util::fs::write_atomic;
use anyhow::{bail, Context};
use dka_baselines::MethodConfig;
use dka_core::erf::{backbone_feature_map, high_contribution_area_ratios, ErfAccumulator};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What to measure the ERF of.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A trained run's folder (`dka train --out`, or a grid's `runs/<id>`).
    Run(PathBuf),
    /// A method at initialisation: a name (`dka`, `adapter`, ...) or a JSON method config, on
    /// `backbone` with the test images of `dataset` (default: the one `--data` names).
    Method {
        method: String,
        backbone: Option<String>,
        dataset: Option<String>,
        img_size: Option<u32>,
    },
    /// A grid's folder: each of its runs whose method is in `methods` (one draw: `draw`, or
    /// the smallest present), only runs whose axes match `filter` (`AXIS=VALUE`), and with
    /// `init` each method at initialisation.
    Grid {
        grid: PathBuf,
        methods: Vec<String>,
        filter: Vec<String>,
        draw: Option<u32>,
        init: bool,
    },
}

/// `dka erf`'s options.
#[derive(Debug, Clone)]
pub struct ErfOptions {
    pub subject: Subject,
    /// Backbone weights (.safetensors) or `none`; overrides the runs' config.json.
    pub weights: Option<PathBuf>,
    /// Test images to average over (fewer when the split has fewer).
    pub images: usize,
    /// Images per backward pass.
    pub batch: usize,
    /// Output folder.
    pub out: PathBuf,
    /// Where the datasets are, the device, the cache (its `weights` are not used).
    pub sources: Sources,
}

/// One map measured: what, where it was written, its area ratios.
pub struct Measured {
    pub target: Target,
    pub dir: PathBuf,
    pub rows: Vec<RatioRow>,
}

/// One map to measure: a config, the trained tensors (none: at initialisation), its labels.
#[derive(Debug, Clone)]
pub struct Target {
    pub cfg: RunConfig,
    /// The run folder whose `adapter/` is loaded; `None`: the method at initialisation.
    pub run: Option<PathBuf>,
    /// The method's label (the grid's axis label).
    pub label: String,
    /// The training-data fraction, or `init`.
    pub fraction: String,
}

/// What a map measured (`erf.json`).
#[derive(Debug, serde::Serialize)]
struct MapInfo<'a> {
    method: &'a str,
    method_config: &'a MethodConfig,
    fraction: &'a str,
    run: Option<&'a Path>,
    backbone: &'a str,
    weights: Option<&'a Path>,
    dataset: &'a str,
    draw: u32,
    split_sha256: &'a str,
    img_size: u32,
    input: String,
    images: usize,
    skipped_not_finite: usize,
    test_images_in_split: usize,
    procedure: &'static str,
}

/// The scores of `t` over the first `images` test images of its split.
pub fn measure(
    t: &Target,
    root: &Path,
    images: usize,
    batch: usize,
    device: Device,
    cache_dir: &Path,
) -> anyhow::Result<(ErfAccumulator, RunData, usize)> {
    let mut cfg = t.cfg.clone();
    // Gradients in fp32 whatever the run trained in; the config's loader threads may be another
    // machine's.
    cfg.precision = Precision::Fp32;
    cfg.loader_threads = 0;
    let cfg = cfg.resolve(device)?;
    let data = RunData::open(&cfg, root, cache_dir)?;
    if let Some(run) = &t.run {
        anyhow::ensure!(
            data.split_sha256 == manifest_of(run)?,
            "{}: the data at {} is not the data this run was trained on (its manifest.json differs)",
            run.display(),
            root.display()
        );
    }
    let task = data.ds.task();
    // The trainer's seed: a method's initialisation (and a random-init backbone) as in training.
    tch::manual_seed(cfg.seed as i64);
    let mut model = Model::build(
        &cfg,
        task.classes().len() as i64,
        task.is_segmentation(),
        device,
    )?;
    if let Some(run) = &t.run {
        model.load_trained(&run.join("adapter"))?;
    }
    let spec = cfg.input_spec()?;
    let pad = spec.resize == dka_core::input::ResizeMode::LongestSidePad;
    let normalizer = Normalizer::new(&spec, device);
    let (split, _) = data.decoded(
        dka_data::SplitName::Test,
        &preprocess(&cfg, &spec),
        cfg.loader_threads.max(1),
    )?;
    let available = split.len();
    anyhow::ensure!(available > 0, "{}: the test split is empty", cfg.dataset);
    let mut lcfg = cfg.clone();
    lcfg.batch_size = batch.max(1);
    let size = cfg.img_size as i64;
    let mut acc = ErfAccumulator::new(size, size);
    let feature_map = |x: &Tensor| backbone_feature_map(&model.backbone, x);
    for b in loader(&split, (0..images.min(available)).collect(), None, &lcfg, 0)? {
        let b = b.context("an ERF batch")?;
        let (x, _, valid) = to_device(&b, &split, pad, device);
        let x = normalizer.apply(&x, valid.as_ref());
        acc.add(&feature_map, &x)?;
    }
    anyhow::ensure!(
        acc.images() > 0,
        "every image's scores were not finite ({} skipped)",
        acc.skipped()
    );
    Ok((acc, data, available))
}

/// Writes a map's folder (`erf.safetensors`, `erf.csv`, `erf.json`, `erf.png`/`.svg`) and
/// returns its area-ratio rows (`map` = the folder's name).
fn write_map(
    dir: &Path,
    t: &Target,
    acc: &ErfAccumulator,
    data: &RunData,
    available: usize,
) -> anyhow::Result<Vec<RatioRow>> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mean = acc.mean();
    crate::util::fs::write_safetensors(
        &dir.join("erf.safetensors"),
        &[
            ("sum", acc.sum().shallow_clone()),
            ("mean", mean.shallow_clone()),
        ],
    )?;
    let map_name = dir
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| ".".into());
    let rows: Vec<RatioRow> = high_contribution_area_ratios(&mean)
        .into_iter()
        .map(|(th, r)| RatioRow {
            method: t.label.clone(),
            fraction: t.fraction.clone(),
            backbone: t.cfg.backbone.clone(),
            dataset: t.cfg.dataset.clone(),
            images: acc.images(),
            map: map_name.clone(),
            t: th,
            side: r.map(|r| r.side),
            area_ratio: r.map(|r| r.ratio),
        })
        .collect();
    write_rows(&dir.join("erf.csv"), &rows)?;
    let info = MapInfo {
        method: &t.label,
        method_config: &t.cfg.method,
        fraction: &t.fraction,
        run: t.run.as_deref(),
        backbone: &t.cfg.backbone,
        weights: t.cfg.weights_file(),
        dataset: &t.cfg.dataset,
        draw: t.cfg.draw,
        split_sha256: &data.split_sha256,
        img_size: t.cfg.img_size,
        input: t.cfg.input_spec()?.source,
        images: acc.images(),
        skipped_not_finite: acc.skipped(),
        test_images_in_split: available,
        procedure: "RepLKNet: relu(out[:, :, h/2, w/2]).sum() back-propagated to the normalised input, relu, summed over channels, mean over images; ratios from log10(mean + 1)/max",
    };
    write_atomic(
        &dir.join("erf.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    if style::font_available() {
        let (h, w) = mean.size2()?;
        let values = Vec::<f64>::try_from(mean.to_kind(Kind::Double).contiguous().view([-1]))?;
        let map = ErfMap {
            h: h as usize,
            w: w as usize,
            values: fig2_erf::normalised_log(&values),
            ratios: rows.iter().map(|r| (r.t, r.area_ratio)).collect(),
            images: acc.images(),
        };
        let title = format!(
            "ERF of {}, {}, {}, {} {} image(s)",
            short_name(&t.cfg.backbone),
            style::display(&t.label),
            if t.fraction == "init" {
                "at initialisation".to_string()
            } else {
                format!("trained on {} of the data", t.fraction)
            },
            acc.images(),
            style::dataset_label(&t.cfg.dataset),
        );
        style::save(
            &fig2_erf::MapFigure {
                map: &map,
                title: &title,
            },
            &dir.join("erf"),
        )?;
    } else {
        tracing::warn!("{}", style::no_font_warning("erf.png"));
    }
    Ok(rows)
}

fn write_rows(path: &Path, rows: &[RatioRow]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    write_atomic(path, &w.into_inner()?)
}

fn read_config(path: &Path) -> anyhow::Result<RunConfig> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// A folder name for a label: lower case, `%` as `pct`, anything else odd as `-`.
pub fn slug(s: &str) -> String {
    s.replace('%', "pct")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The maps of a grid: per (method label, fraction) the latest finished run of `draw` (default:
/// the smallest draw among the selected methods' runs) whose method is in `methods`; with
/// `init`, each method at initialisation with its smallest fraction's config.
pub fn grid_targets(
    grid: &Path,
    methods: &[String],
    filter: &super::AxisFilter,
    draw: Option<u32>,
    init: bool,
) -> anyhow::Result<Vec<Target>> {
    let runs_dir = grid.join("runs");
    let mut found: Vec<(RunConfig, PathBuf, String, String)> = Vec::new();
    for e in std::fs::read_dir(&runs_dir).with_context(|| runs_dir.display().to_string())? {
        let dir = e?.path();
        let Some(rec) = read_record(&dir) else {
            continue;
        };
        if rec.status != Status::Ok || !filter.matches(&rec.axes) {
            continue;
        }
        let cfg = read_config(&dir.join("config.json"))?;
        if !methods.iter().any(|m| m == cfg.method.method().name()) {
            continue;
        }
        let label = rec
            .axes
            .get("method")
            .cloned()
            .unwrap_or_else(|| cfg.method.method().name().to_string());
        found.push((cfg, dir, label, rec.finished_utc));
    }
    let Some(draw) = draw.or_else(|| found.iter().map(|f| f.0.draw).min()) else {
        bail!(
            "{}: no finished run of {} in this grid",
            grid.display(),
            methods.join(", ")
        );
    };
    let mut latest: BTreeMap<(String, String), (RunConfig, PathBuf, String)> = BTreeMap::new();
    for (cfg, dir, label, fin) in found.into_iter().filter(|f| f.0.draw == draw) {
        let key = (label, cfg.fraction.clone());
        if latest.get(&key).is_none_or(|old| old.2 <= fin) {
            latest.insert(key, (cfg, dir, fin));
        }
    }
    let mut targets: Vec<Target> = latest
        .iter()
        .map(|((label, fraction), (cfg, dir, _))| Target {
            cfg: cfg.clone(),
            run: Some(dir.clone()),
            label: label.clone(),
            fraction: fraction.clone(),
        })
        .collect();
    if init {
        let mut smallest: BTreeMap<String, &Target> = BTreeMap::new();
        for t in &targets {
            let f = dka_data::parse_fraction(&t.fraction).unwrap_or(f64::MAX);
            match smallest.get(&t.label) {
                Some(o) if dka_data::parse_fraction(&o.fraction).unwrap_or(f64::MAX) <= f => {}
                _ => {
                    smallest.insert(t.label.clone(), t);
                }
            }
        }
        let inits: Vec<Target> = smallest
            .into_values()
            .map(|t| Target {
                cfg: t.cfg.clone(),
                run: None,
                label: t.label.clone(),
                fraction: "init".into(),
            })
            .collect();
        targets.extend(inits);
    }
    Ok(targets)
}

/// The target of `--run`.
fn run_target(run: &Path, o: &ErfOptions) -> anyhow::Result<Target> {
    let cfg = with_weights(read_config(&run.join("config.json"))?, o);
    let label = read_record(run)
        .and_then(|r| r.axes.get("method").cloned())
        .unwrap_or_else(|| cfg.method.method().name().to_string());
    let fraction = cfg.fraction.clone();
    Ok(Target {
        cfg,
        run: Some(run.to_path_buf()),
        label,
        fraction,
    })
}

/// The target of `--method`: the method at initialisation.
fn method_target(
    m: &str,
    backbone: Option<&str>,
    dataset: Option<&str>,
    img_size: Option<u32>,
    o: &ErfOptions,
) -> anyhow::Result<Target> {
    let method: MethodConfig = if m.trim_start().starts_with('{') {
        serde_json::from_str(m).with_context(|| format!("--method {m}"))?
    } else {
        MethodConfig::by_name(m).with_context(|| format!("--method {m}: no such method"))?
    };
    let backbone = backbone
        .context("--method needs --backbone (and --weights, --dataset)")?
        .to_string();
    let dataset = match (dataset, o.sources.data.as_slice()) {
        (Some(d), _) => d.to_string(),
        (None, [one]) => one
            .split_once('=')
            .map(|x| x.0.to_string())
            .unwrap_or_default(),
        _ => bail!("--method needs --dataset when --data names several datasets"),
    };
    let label = method.method().name().to_string();
    let cfg = RunConfig {
        backbone,
        weights: o.weights.clone(),
        method,
        dataset,
        img_size: img_size.unwrap_or(224),
        ..RunConfig::default()
    };
    cfg.validate()?;
    Ok(Target {
        cfg,
        run: None,
        label,
        fraction: "init".into(),
    })
}

fn with_weights(mut cfg: RunConfig, o: &ErfOptions) -> RunConfig {
    if o.weights.is_some() {
        cfg.weights.clone_from(&o.weights);
    }
    cfg
}

/// Every map to measure, with its folder.
fn targets(o: &ErfOptions) -> anyhow::Result<Vec<(Target, PathBuf)>> {
    Ok(match &o.subject {
        Subject::Run(run) => vec![(run_target(run, o)?, o.out.clone())],
        Subject::Method {
            method,
            backbone,
            dataset,
            img_size,
        } => vec![(
            method_target(
                method,
                backbone.as_deref(),
                dataset.as_deref(),
                *img_size,
                o,
            )?,
            o.out.clone(),
        )],
        Subject::Grid {
            grid,
            methods,
            filter,
            draw,
            init,
        } => {
            let filter = super::AxisFilter::parse(filter)?;
            grid_targets(grid, methods, &filter, *draw, *init)?
                .into_iter()
                .map(|mut t| {
                    t.cfg = with_weights(t.cfg, o);
                    let dir = o
                        .out
                        .join(format!("{}_{}", slug(&t.label), slug(&t.fraction)));
                    (t, dir)
                })
                .collect()
        }
    })
}

/// Measures every map `o` asks for, writing each map's folder; for a grid also
/// `area_ratios.csv` and the map grid, whose PNG is returned (`None` without a font).
pub fn run(o: &ErfOptions) -> anyhow::Result<(Vec<Measured>, Option<PathBuf>)> {
    let device = pick(o.sources.device)?;
    let cache = o.sources.cache_dir();
    let mut measured = Vec::new();
    for (t, dir) in targets(o)? {
        tracing::info!(
            "ERF of {} ({}) on {} test images of {}",
            t.label,
            t.fraction,
            o.images,
            t.cfg.dataset
        );
        let root = o.sources.root(&t.cfg.dataset)?;
        let (acc, data, available) = measure(&t, &root, o.images, o.batch, device, &cache)?;
        let rows = write_map(&dir, &t, &acc, &data, available)?;
        measured.push(Measured {
            target: t,
            dir,
            rows,
        });
    }
    let mut figure = None;
    if matches!(o.subject, Subject::Grid { .. }) {
        let all: Vec<RatioRow> = measured.iter().flat_map(|m| m.rows.clone()).collect();
        write_rows(&o.out.join("area_ratios.csv"), &all)?;
        figure = crate::report::plots::draw_erf_grid(&o.out)?;
    }
    Ok((measured, figure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_from_labels() {
        assert_eq!(slug("DKA d6"), "dka-d6");
        assert_eq!(slug("1.25%"), "1.25pct");
        assert_eq!(slug("init"), "init");
    }
}
