//! `dka bench data`: images per second the data path delivers at the network's input size,
//! on synthetic releases made at real sizes in a temporary folder and read by the real
//! loaders:
//!
//! - an ISIC-2019 tree (`ISIC_2019_Training_Input/*.jpg`, 1024x768 by default, and the
//!   GroundTruth CSV): the pre-cache path (full-resolution f32 decode and resize, re-created
//!   here as it was), today's uncached `BatchLoader` (8-bit decode and resize), the first
//!   epoch through the decoded cache (build) and later epochs from it, each with and without
//!   augmentation;
//! - BraTS-2020-like cases (4 modalities + seg, 240x240x155 gzipped NIfTI, smooth content):
//!   seconds per epoch before the cache (the trainer's shuffled order through the volume
//!   LRU; measured on a subset of slices) and after it, extrapolated linearly to BraTS-2020's
//!   369 training cases (rows say which numbers are extrapolated).
//!
//! Writes a CSV (case, n_images, mode, epoch_kind, images_per_s, seconds, note) and a JSON
//! sidecar with the machine and the settings. Not a timed test: sizes are flags, so a unit
//! test runs it on tiny inputs.
use anyhow::Context;
use dka_data::{
    epoch_order, open_dataset, Augment, BatchLoader, CachedLoader, Dataset, DecodedSplit,
    LoaderConfig, LoaderOptions, Manifest, Preprocess, SplitSpec,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::perf::releases::{synth_brats_case, synth_isic};

/// BraTS-2020's training cases, the scale BraTS rows are extrapolated to.
const BRATS_2020_CASES: usize = 369;

/// What `dka bench data` makes and measures, and where it writes.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// CSV to write (a `.meta.json` is written next to it).
    pub output: PathBuf,
    /// ISIC-2019-like JPEGs to make.
    pub images: usize,
    /// Their width and height.
    pub width: u32,
    pub height: u32,
    /// Network input size (square).
    pub size: u32,
    /// Later (cached) epochs measured; their mean is reported.
    pub epochs: u64,
    /// BraTS-like cases to make (0: skip BraTS).
    pub brats_cases: usize,
    /// Their volume size, `XxYxZ`.
    pub brats_dims: [usize; 3],
    /// Slices the uncached BraTS epoch is timed on (then extrapolated to the whole epoch).
    pub brats_uncached_slices: usize,
    /// Loader threads (default: cores - 1).
    pub threads: Option<usize>,
    pub batch: usize,
    /// Folder for the synthetic data and caches (default: a new one under the system's
    /// temporary folder, removed at the end).
    pub workdir: Option<PathBuf>,
}

/// `XxYxZ` as three sizes.
pub fn parse_dims(s: &str) -> Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse().map_err(|_| format!("`{p}` is not a size")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [x, y, z] if x > 0 && y > 0 && z > 0 => Ok([x, y, z]),
        _ => Err(format!("`{s}` is not XxYxZ")),
    }
}

/// One CSV row.
struct Row {
    case: String,
    n_images: usize,
    mode: String,
    epoch_kind: String,
    images_per_s: f64,
    seconds: f64,
    note: String,
}

fn row(case: &str, n: usize, mode: &str, kind: &str, seconds: f64, note: &str) -> Row {
    tracing::info!(
        "{case}: {mode}, {kind}: {n} images in {seconds:.2} s = {:.0}/s",
        n as f64 / seconds
    );
    Row {
        case: case.into(),
        n_images: n,
        mode: mode.into(),
        epoch_kind: kind.into(),
        images_per_s: n as f64 / seconds.max(1e-9),
        seconds,
        note: note.into(),
    }
}

/// The decode path before the cache, as it was: full-resolution f32 RGB, resized in f32
/// (Catmull-Rom), normalised to (3, H, W); `threads` threads over the files.
fn legacy_epoch(paths: &[PathBuf], size: u32, threads: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let pre = Preprocess::default();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = paths
            .chunks(paths.len().div_ceil(threads.max(1)).max(1))
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<f32> {
                    let mut acc = 0.0;
                    for p in chunk {
                        let img = image::open(p)
                            .with_context(|| p.display().to_string())?
                            .to_rgb32f();
                        let r = image::imageops::resize(
                            &img,
                            size,
                            size,
                            image::imageops::FilterType::CatmullRom,
                        );
                        let (w, h) = (size as usize, size as usize);
                        let raw = r.as_raw();
                        let chw = ndarray::Array3::from_shape_fn((3, h, w), |(c, y, x)| {
                            (raw[(y * w + x) * 3 + c].clamp(0.0, 1.0) - pre.mean[c]) / pre.std[c]
                        });
                        acc += chw[[0, 0, 0]];
                    }
                    Ok(acc)
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("legacy decoder panicked"))??;
        }
        Ok(())
    })?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Starts a loader and drains it; returns (images, seconds from the start).
fn drain<B, L: Iterator<Item = dka_data::Result<B>>>(
    start: impl FnOnce() -> dka_data::Result<L>,
    count: impl Fn(&B) -> usize,
) -> anyhow::Result<(usize, f64)> {
    let t0 = Instant::now();
    let mut n = 0;
    for b in start()? {
        n += count(&b?);
    }
    Ok((n, t0.elapsed().as_secs_f64()))
}

/// Scans a release and writes down its whole set as the training split of a manifest.
fn scan(
    name: &str,
    root: &Path,
    opts: &LoaderOptions,
    hashes: &Path,
) -> anyhow::Result<(Arc<dyn Dataset>, Vec<usize>, Manifest)> {
    let ds: Arc<dyn Dataset> = Arc::from(open_dataset(name, root, opts)?);
    let all: Vec<usize> = (0..ds.records().len()).collect();
    let split = dka_data::Split {
        train: all.clone(),
        ..Default::default()
    };
    let (m, _) = Manifest::build_cached(
        ds.as_ref(),
        &SplitSpec::default(),
        opts,
        &split,
        Some(hashes),
    )?;
    Ok((ds, all, m))
}

/// Cache build (first epoch) and later cached epochs, with and without augmentation.
#[allow(clippy::too_many_arguments)]
fn cached_rows(
    rows: &mut Vec<Row>,
    case: &str,
    ds: &dyn Dataset,
    all: &[usize],
    m: &Manifest,
    pre: &Preprocess,
    cache: &Path,
    cfg: &LoaderConfig,
    epochs: u64,
    scale: f64,
    note: &str,
) -> anyhow::Result<()> {
    let n = all.len();
    let bar = crate::util::progress::bar(n as u64, "decoding");
    let progress = |done: usize, _: usize| bar.set_position(done as u64);
    let (split, stats) =
        DecodedSplit::open_or_build(ds, all, pre, m, cache, cfg.threads, &progress)?;
    bar.finish_and_clear();
    anyhow::ensure!(
        stats.decoded == n,
        "expected a fresh cache, found {:?}",
        stats.outcome
    );
    let split = Arc::new(split);
    let positions: Vec<usize> = (0..n).collect();
    for aug in [None, Some(Augment::default())] {
        let mode = if aug.is_some() {
            "cached, augmented"
        } else {
            "cached"
        };
        let first = || CachedLoader::new(split.clone(), epoch_order(&positions, 0, 0), aug, cfg, 0);
        let (k, s) = drain(first, |b| b.indices.len())?;
        rows.push(row(
            case,
            (k as f64 * scale) as usize,
            mode,
            "first (cache build + epoch)",
            (stats.seconds + s) * scale,
            note,
        ));
        let mut total = 0.0;
        for e in 1..=epochs {
            let l = || CachedLoader::new(split.clone(), epoch_order(&positions, 0, e), aug, cfg, e);
            total += drain(l, |b| b.indices.len())?.1;
        }
        let s = total / epochs.max(1) as f64;
        rows.push(row(
            case,
            (n as f64 * scale) as usize,
            mode,
            "later",
            s * scale,
            note,
        ));
    }
    Ok(())
}

fn isic(
    a: &DataOptions,
    work: &Path,
    cfg: &LoaderConfig,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let root = work.join("isic2019");
    tracing::info!(
        "making {} {}x{} JPEGs in {}",
        a.images,
        a.width,
        a.height,
        root.display()
    );
    synth_isic(&root, a.images, a.width, a.height)?;
    let (ds, all, m) = scan(
        "isic2019",
        &root,
        &LoaderOptions::default(),
        &work.join("cache"),
    )?;
    let case = format!("isic2019 {}x{} jpeg -> {}", a.width, a.height, a.size);
    let n = all.len();
    let pre = Preprocess {
        size: (a.size, a.size),
        ..Preprocess::default()
    };
    let paths: Vec<PathBuf> = all
        .iter()
        .map(|&i| root.join(&ds.records()[i].files[0]))
        .collect();
    let s = legacy_epoch(&paths, a.size, cfg.threads)?;
    rows.push(row(
        &case,
        n,
        "before: f32 decode + resize",
        "every",
        s,
        "the pre-cache path, re-created here",
    ));
    for aug in [None, Some(Augment::default())] {
        let mode = if aug.is_some() {
            "uncached u8, augmented"
        } else {
            "uncached u8"
        };
        let l = || BatchLoader::new(ds.clone(), epoch_order(&all, 0, 0), pre, aug, cfg, 0);
        let (k, s) = drain(l, |b| b.indices.len())?;
        let note = if aug.is_none() {
            "BatchLoader (8-bit decode and resize)"
        } else {
            "BatchLoader (8-bit decode, random resized crop + flip)"
        };
        rows.push(row(&case, k, mode, "every", s, note));
    }
    cached_rows(
        rows,
        &case,
        ds.as_ref(),
        &all,
        &m,
        &pre,
        &work.join("cache"),
        cfg,
        a.epochs,
        1.0,
        "",
    )
}

fn brats(
    a: &DataOptions,
    work: &Path,
    cfg: &LoaderConfig,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let root = work.join("brats");
    let [x, y, z] = a.brats_dims;
    tracing::info!(
        "making {} BraTS-like cases of {x}x{y}x{z} in {}",
        a.brats_cases,
        root.display()
    );
    std::thread::scope(|s| -> anyhow::Result<()> {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let root = &root;
                s.spawn(move || -> anyhow::Result<()> {
                    (t..a.brats_cases)
                        .step_by(2)
                        .try_for_each(|c| synth_brats_case(root, c, a.brats_dims))
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("case writer panicked"))??;
        }
        Ok(())
    })?;
    let (ds, all, m) = scan(
        "brats",
        &root,
        &LoaderOptions::default(),
        &work.join("cache"),
    )?;
    let n = all.len();
    let scale = BRATS_2020_CASES as f64 / a.brats_cases as f64;
    let case = format!("brats {x}x{y}x{z} flair+seg -> {}", a.size);
    let pre = Preprocess {
        size: (a.size, a.size),
        ..Preprocess::default()
    };
    let extrapolated = format!(
        "extrapolated linearly from {} cases ({n} slices) to {BRATS_2020_CASES}",
        a.brats_cases
    );
    // Before: the trainer's shuffled order through the volume LRU, timed on a subset.
    let order = epoch_order(&all, 0, 0);
    let sub = order[..a.brats_uncached_slices.min(n)].to_vec();
    let l = || BatchLoader::new(ds.clone(), sub, pre, Some(Augment::default()), cfg, 0);
    let (k, s) = drain(l, |b| b.indices.len())?;
    let per_slice = s / k.max(1) as f64;
    let note =
        format!("BatchLoader, shuffled order, LRU of 8 cases; timed on {k} slices, {extrapolated}");
    rows.push(row(
        &case,
        (n as f64 * scale) as usize,
        "uncached u8, augmented",
        "every",
        per_slice * n as f64 * scale,
        &note,
    ));
    cached_rows(
        rows,
        &case,
        ds.as_ref(),
        &all,
        &m,
        &pre,
        &work.join("cache"),
        cfg,
        a.epochs,
        scale,
        &extrapolated,
    )
}

fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let tmp = path.with_extension("csv.partial");
    {
        let mut w = csv::Writer::from_path(&tmp).with_context(|| tmp.display().to_string())?;
        w.write_record([
            "case",
            "n_images",
            "mode",
            "epoch_kind",
            "images_per_s",
            "seconds",
            "note",
        ])?;
        for r in rows {
            w.write_record([
                r.case.as_str(),
                &r.n_images.to_string(),
                &r.mode,
                &r.epoch_kind,
                &format!("{:.1}", r.images_per_s),
                &format!("{:.3}", r.seconds),
                &r.note,
            ])?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn run(a: &DataOptions) -> anyhow::Result<()> {
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let (work, remove) = match &a.workdir {
        Some(w) => (w.clone(), false),
        None => (
            std::env::temp_dir().join(format!("dka-bench-data-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;
    let cfg = LoaderConfig {
        batch_size: a.batch,
        threads: a.threads.unwrap_or_else(dka_data::default_threads),
        ..LoaderConfig::default()
    };
    let mut rows = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        isic(a, &work, &cfg, &mut rows)?;
        if a.brats_cases > 0 {
            brats(a, &work, &cfg, &mut rows)?;
        }
        Ok(())
    })();
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    result?;
    write_csv(&a.output, &rows)?;
    let meta = serde_json::json!({
        "what": "images per second the data path delivers at the network input size, on synthetic releases at real sizes read by the real loaders",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "isic_images": a.images, "isic_size": [a.width, a.height], "input_size": a.size,
        "brats_cases": a.brats_cases, "brats_dims": a.brats_dims, "brats_uncached_slices": a.brats_uncached_slices,
        "later_epochs": a.epochs, "loader_threads": cfg.threads, "batch": a.batch,
        "note": "'before' re-creates the pre-cache decode (image's f32 decode and Catmull-Rom resize, as dka-data did); 'uncached u8' is today's BatchLoader; 'first' includes building the decoded cache (and, for BraTS, decoding each case once); 'later' is the mean over later epochs; augmented = RandomResizedCrop + hflip. BraTS rows are extrapolated linearly to 369 cases (BraTS-2020 training) and say so; the uncached BraTS epoch is timed on a subset of slices. Page cache warm (files just written).",
        "machine": crate::util::provenance::machine(),
    });
    let meta_path = a.output.with_extension("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)?;
    tracing::info!("wrote {} and {}", a.output.display(), meta_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_tiny_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data.csv");
        run(&DataOptions {
            output: out.clone(),
            images: 8,
            width: 96,
            height: 72,
            size: 32,
            epochs: 1,
            brats_cases: 2,
            brats_dims: [24, 24, 12],
            brats_uncached_slices: 4,
            threads: Some(1),
            batch: 4,
            workdir: Some(dir.path().join("work")),
        })
        .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "case,n_images,mode,epoch_kind,images_per_s,seconds,note"
        );
        assert_eq!(lines.len(), 1 + 7 + 5, "{text}");
        assert!(text.contains("extrapolated"));
        assert!(out.with_extension("meta.json").is_file());
    }
}
