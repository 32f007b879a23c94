//! The data of a run: the opened dataset, the drawn split and its manifest (whose content hash
//! is part of the run's identity), batches, and the input normalisation done on the device.
use crate::run_config::RunConfig;
use anyhow::Context;
use dka_core::input::{InputSpec, PixelScale};
use dka_data::{
    open_dataset, BatchLoader, BatchTarget, Dataset, LoaderConfig, LoaderOptions, Manifest,
    Preprocess, Split, SplitSpec,
};
use sha2::{Digest, Sha256};
use std::path::Path;
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

/// A run's dataset, split and manifest.
pub struct RunData {
    pub ds: Arc<dyn Dataset>,
    pub split: Split,
    pub manifest: Manifest,
    /// SHA-256 of the manifest's content (dataset, options, split entries and every file's
    /// hash; not the folder it was read from): the exact data a run saw.
    pub split_sha256: String,
}

impl RunData {
    /// Draws `cfg`'s split of an opened dataset and writes it down (hashing its files).
    pub fn new(ds: Arc<dyn Dataset>, cfg: &RunConfig) -> anyhow::Result<Self> {
        let spec = split_spec(cfg)?;
        let split = dka_data::make_split(ds.as_ref(), &spec)?;
        let manifest = Manifest::build(ds.as_ref(), &spec, &cfg.data_options, &split)?;
        let split_sha256 = manifest_sha256(&manifest)?;
        Ok(Self {
            ds,
            split,
            manifest,
            split_sha256,
        })
    }

    /// Opens `cfg.dataset` at `root` and draws the split.
    pub fn open(cfg: &RunConfig, root: &Path) -> anyhow::Result<Self> {
        Self::new(open(&cfg.dataset, root, &cfg.data_options)?, cfg)
    }
}

/// SHA-256 over what decides a manifest's data: everything but the folder it was read from.
pub fn manifest_sha256(m: &Manifest) -> anyhow::Result<String> {
    let v = serde_json::json!({
        "dataset": m.dataset, "task": m.task, "spec": m.spec, "options": m.options,
        "sha256": m.sha256, "train": m.train, "val": m.val, "test": m.test,
    });
    let digest = Sha256::digest(serde_json::to_vec(&v)?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
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

/// Batches of `order` (record indices); augmented when `augment` is given (training only).
pub fn loader(
    data: &RunData,
    order: Vec<usize>,
    pre: Preprocess,
    augment: Option<dka_data::Augment>,
    cfg: &RunConfig,
    epoch: u64,
) -> anyhow::Result<BatchLoader> {
    let lcfg = LoaderConfig {
        batch_size: cfg.batch_size,
        threads: cfg.loader_threads.max(1),
        prefetch: 2,
        // Every sample every epoch: the last batch may be smaller.
        drop_last: false,
        seed: cfg.seed,
    };
    Ok(BatchLoader::new(
        data.ds.clone(),
        order,
        pre,
        augment,
        &lcfg,
        epoch,
    )?)
}

/// A batch on the device: images in [0, 1] `[B, 3, H, W]` f32 and targets (`[B]` class
/// indices or `[B, H, W]` class maps, int64; 255 marks ignored pixels).
pub fn to_device(b: &dka_data::Batch, device: Device) -> (Tensor, Tensor) {
    let s = b.images.shape();
    let x = Tensor::from_slice(b.images.as_slice().expect("contiguous batch")).view([
        s[0] as i64,
        s[1] as i64,
        s[2] as i64,
        s[3] as i64,
    ]);
    let y = match &b.target {
        BatchTarget::Classes(c) => Tensor::from_slice(c),
        BatchTarget::Masks(m) => {
            let s = m.shape();
            Tensor::from_slice(m.as_slice().expect("contiguous masks")).view([
                s[0] as i64,
                s[1] as i64,
                s[2] as i64,
            ])
        }
    };
    (x.to_device(device), y.to_device(device))
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

    /// `(x − mean) / std`, or per image `(x − min) / (max − min)`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        if self.min_max {
            let dims = [1i64, 2, 3];
            let lo = x.amin(dims.as_slice(), true);
            let hi = x.amax(dims.as_slice(), true);
            (x - &lo) / (hi - lo).clamp_min(1e-8)
        } else {
            (x - &self.mean) / &self.std
        }
    }
}

/// Mask targets for the loss and the metrics: int64 class maps.
pub fn targets(y: &Tensor) -> Tensor {
    if y.kind() == Kind::Int64 {
        y.shallow_clone()
    } else {
        y.to_kind(Kind::Int64)
    }
}
