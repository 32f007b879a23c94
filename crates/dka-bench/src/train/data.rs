//! The data of a run: the opened dataset, the drawn split and its manifest (whose content hash
//! is part of the run's identity), batches, and the input normalisation done on the device.
use crate::config::run::RunConfig;
use anyhow::Context;
use dka_core::input::{InputSpec, PixelScale};
use dka_data::{
    open_dataset, CacheStats, CachedLoader, Dataset, DecodedSplit, LoaderConfig, LoaderOptions,
    Manifest, Preprocess, Split, SplitName, SplitSpec, U8Batch, U8Target,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The split parameters of a run.
pub fn split_spec(cfg: &RunConfig) -> anyhow::Result<SplitSpec> {
    Ok(SplitSpec {
        test_fraction: cfg.test_fraction,
        val_fraction: cfg.val_fraction,
        train_fraction: dka_data::parse_fraction(&cfg.fraction)?,
        draw: cfg.draw,
        seed: cfg.split_seed,
    })
}

/// Opens a dataset's release folder with a run's loader options.
pub fn open(name: &str, root: &Path, options: &LoaderOptions) -> anyhow::Result<Arc<dyn Dataset>> {
    Ok(Arc::from(open_dataset(name, root, options).with_context(
        || format!("opening the {name} dataset at {}", root.display()),
    )?))
}

/// A run's dataset, split and manifest, and where decoded images are cached.
pub struct RunData {
    pub ds: Arc<dyn Dataset>,
    pub split: Split,
    pub manifest: Manifest,
    /// The manifest's content hash (dataset, options, split entries and every file's hash;
    /// not the folder it was read from): the exact data a run saw.
    pub split_sha256: String,
    /// Decoded images and file hashes (shared safely by concurrent processes).
    pub cache_dir: PathBuf,
}

impl RunData {
    /// Draws `cfg`'s split of an opened dataset and writes it down (file hashes are cached in
    /// `cache_dir`, so each file is hashed once per machine).
    pub fn new(ds: Arc<dyn Dataset>, cfg: &RunConfig, cache_dir: &Path) -> anyhow::Result<Self> {
        let spec = split_spec(cfg)?;
        let split = dka_data::make_split(ds.as_ref(), &spec)?;
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("the cache folder {}", cache_dir.display()))?;
        let (manifest, _) = Manifest::build_cached(
            ds.as_ref(),
            &spec,
            &cfg.data_options,
            &split,
            Some(cache_dir),
        )?;
        let split_sha256 = manifest.content_hash();
        Ok(Self {
            ds,
            split,
            manifest,
            split_sha256,
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    /// Opens `cfg.dataset` at `root` and draws the split.
    pub fn open(cfg: &RunConfig, root: &Path, cache_dir: &Path) -> anyhow::Result<Self> {
        Self::new(open(&cfg.dataset, root, &cfg.data_options)?, cfg, cache_dir)
    }

    /// The records of one split.
    pub fn indices(&self, which: SplitName) -> &[usize] {
        match which {
            SplitName::Train => &self.split.train,
            SplitName::Val => &self.split.val,
            SplitName::Test => &self.split.test,
        }
    }

    /// Split `which` decoded at `pre`'s geometry: memory-mapped from the cache, built (each
    /// image decoded and resized once, in u8) the first time any run asks for it.
    pub fn decoded(
        &self,
        which: SplitName,
        pre: &Preprocess,
        threads: usize,
    ) -> anyhow::Result<(Arc<DecodedSplit>, CacheStats)> {
        let indices = self.indices(which);
        let bar = crate::util::progress::bar(
            indices.len() as u64,
            &format!("decoding {}", which.as_str()),
        );
        let progress = |done: usize, _total: usize| bar.set_position(done as u64);
        let (split, stats) = DecodedSplit::open_or_build(
            self.ds.as_ref(),
            indices,
            pre,
            &self.manifest,
            &self.cache_dir,
            threads,
            &progress,
        )
        .with_context(|| format!("the decoded {} split of {}", which.as_str(), self.ds.name()))?;
        bar.finish_and_clear();
        Ok((Arc::new(split), stats))
    }
}

/// The content hash of the manifest a run folder holds.
pub fn manifest_of(run: &Path) -> anyhow::Result<String> {
    let path = run.join("manifest.json");
    Ok(Manifest::load(&path)
        .with_context(|| path.display().to_string())?
        .content_hash())
}

/// The geometric part of a run's preprocessing (normalisation happens on the device).
pub fn preprocess(cfg: &RunConfig, spec: &InputSpec) -> Preprocess {
    Preprocess {
        size: (cfg.img_size, cfg.img_size),
        // The loader delivers [0, 1]; [`Normalizer`] does the rest on the device.
        mean: [0.0; 3],
        std: [1.0; 3],
        interpolation: match spec.interpolation {
            dka_core::input::Interp::Bilinear => dka_data::Interpolation::Bilinear,
            dka_core::input::Interp::Bicubic => dka_data::Interpolation::Bicubic,
        },
        crop_pct: None,
        resize: match spec.resize {
            dka_core::input::ResizeMode::Stretch => dka_data::ResizeMode::Stretch,
            dka_core::input::ResizeMode::LongestSidePad => dka_data::ResizeMode::LongestSidePad,
        },
        scale: dka_data::PixelScale::MeanStd,
    }
}

/// Batches of `order` (positions in `split`), augmented on the cached u8 images when
/// `augment` is given (training only).
pub fn loader(
    split: &Arc<DecodedSplit>,
    order: Vec<usize>,
    augment: Option<dka_data::Augment>,
    cfg: &RunConfig,
    epoch: u64,
) -> anyhow::Result<CachedLoader> {
    loader_from(split, order, augment, cfg, epoch, 0)
}

/// Batches of `order` in `cfg`'s evaluation batch size ([`RunConfig::eval_batch`]), never
/// augmented: evaluation and cached forward passes.
pub fn eval_loader(
    split: &Arc<DecodedSplit>,
    order: Vec<usize>,
    cfg: &RunConfig,
) -> anyhow::Result<CachedLoader> {
    let cfg = RunConfig {
        batch_size: cfg.eval_batch(),
        ..cfg.clone()
    };
    loader_from(split, order, None, &cfg, 0, 0)
}

/// As [`loader`], without the first `first_batch` batches (a resumed epoch).
pub fn loader_from(
    split: &Arc<DecodedSplit>,
    order: Vec<usize>,
    augment: Option<dka_data::Augment>,
    cfg: &RunConfig,
    epoch: u64,
    first_batch: usize,
) -> anyhow::Result<CachedLoader> {
    let lcfg = LoaderConfig {
        batch_size: cfg.batch_size,
        threads: cfg.loader_threads.max(1),
        prefetch: 2,
        // Every sample every epoch: the last batch may be smaller.
        drop_last: false,
        seed: cfg.seed,
    };
    Ok(CachedLoader::starting_at(
        split.clone(),
        order,
        augment,
        &lcfg,
        epoch,
        first_batch,
    )?)
}

/// A batch on the device: images in [0, 1] `[B, 3, H, W]` f32, targets (`[B]` class indices or
/// `[B, H, W]` class maps, int64; 255 marks ignored pixels), and, for padded images that were
/// not augmented, the valid region `[B, 1, H, W]` (1 inside the image content).
pub fn to_device(
    b: &U8Batch,
    split: &DecodedSplit,
    pad: bool,
    device: Device,
) -> (Tensor, Tensor, Option<Tensor>) {
    let s = b.images.shape();
    let (n, h, w) = (s[0] as i64, s[2] as i64, s[3] as i64);
    let x = Tensor::from_slice(b.images.as_slice().expect("contiguous batch"))
        .view([n, 3, h, w])
        .to_device(device)
        .to_kind(Kind::Float)
        / 255.0;
    let y = match &b.target {
        U8Target::Classes(c) => Tensor::from_slice(c).to_device(device),
        U8Target::Masks(m) => Tensor::from_slice(m.as_slice().expect("contiguous masks"))
            .view([n, h, w])
            .to_device(device)
            .to_kind(Kind::Int64),
    };
    let valid = pad.then(|| {
        let mut v = vec![0f32; (n * h * w) as usize];
        for (k, &pos) in b.indices.iter().enumerate() {
            let (eh, ew) = split.extent(pos);
            for yy in 0..(eh as i64).min(h) {
                let row = (k as i64 * h * w + yy * w) as usize;
                v[row..row + (ew as i64).min(w) as usize].fill(1.0);
            }
        }
        Tensor::from_slice(&v).view([n, 1, h, w]).to_device(device)
    });
    (x, y, valid)
}

/// The backbone's input normalisation, applied on the device to images in [0, 1].
pub struct Normalizer {
    mean: Tensor,
    std: Tensor,
    min_max: bool,
}

impl Normalizer {
    pub fn new(spec: &InputSpec, device: Device) -> Self {
        let t = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]).to_device(device);
        Self {
            mean: t(spec.mean),
            std: t(spec.std),
            min_max: spec.scale == PixelScale::MinMax,
        }
    }

    /// `(x − mean) / std`, or per image `(x − min) / (max − min)` (0 for a constant image).
    /// With `valid` (padded images), min and max come from the image content and the padding
    /// is 0 after normalising, as SAM pads its normalised input.
    pub fn apply(&self, x: &Tensor, valid: Option<&Tensor>) -> Tensor {
        let y = if self.min_max {
            let dims = [1i64, 2, 3];
            let (lo, hi) = match valid {
                Some(v) => (
                    x.where_self(&v.gt(0.5), &x.full_like(f64::INFINITY))
                        .amin(dims.as_slice(), true),
                    x.where_self(&v.gt(0.5), &x.full_like(f64::NEG_INFINITY))
                        .amax(dims.as_slice(), true),
                ),
                None => (x.amin(dims.as_slice(), true), x.amax(dims.as_slice(), true)),
            };
            let range = &hi - &lo;
            (x - &lo) / range.clamp_min(1e-12) * range.gt(0.0).to_kind(Kind::Float)
        } else {
            (x - &self.mean) / &self.std
        };
        match valid {
            Some(v) => y * v,
            None => y,
        }
    }
}
