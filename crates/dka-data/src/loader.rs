//! Batching: samples decoded, augmented and resized in parallel on a rayon pool of a chosen
//! size, in a background thread that keeps up to `prefetch` batches ready, so training never
//! waits on the disk.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use dka_data::*;
//! # fn main() -> Result<()> {
//! let ds: Arc<dyn Dataset> = Arc::from(open_dataset("busi-cls", "/data/BUSI".as_ref(), &LoaderOptions::default())?);
//! let split = make_split(ds.as_ref(), &SplitSpec { train_fraction: 0.0125, ..SplitSpec::default() })?;
//! let cfg = LoaderConfig { batch_size: 32, ..LoaderConfig::default() };
//! for epoch in 0..10 {
//!     let order = epoch_order(&split.train, cfg.seed, epoch);
//!     for batch in BatchLoader::new(ds.clone(), order, Preprocess::default(), Some(Augment::default()), &cfg, epoch)? {
//!         let batch = batch?; // images: (B, 3, H, W) f32; target: classes or (B, H, W) masks
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::preset::Preprocess;
use crate::rng::Rng;
use crate::sample::{Sample, Target};

/// Batch loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decoding threads (libtorch wants cores too; keep this below the core count). The
    /// default is [`default_threads`].
    pub threads: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Drop a last incomplete batch (training) or keep it (evaluation).
    pub drop_last: bool,
    /// Seed of the augmentation and of [`epoch_order`].
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            threads: default_threads(),
            prefetch: 2,
            drop_last: false,
            seed: 0,
        }
    }
}

/// The available cores minus one (left to the consumer, e.g. libtorch), at least 1.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Labels of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchTarget {
    /// (B) class indices.
    Classes(Vec<i64>),
    /// (B, H, W) class maps.
    Masks(Array3<i64>),
}

/// One batch, ready to become tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Record indices, in batch order.
    pub indices: Vec<usize>,
    /// (B, 3, H, W), normalised.
    pub images: Array4<f32>,
    pub target: BatchTarget,
}

/// `indices` shuffled for `epoch` (deterministic in seed and epoch).
pub fn epoch_order(indices: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut v = indices.to_vec();
    Rng::from_parts(&[seed, 0xE90C, epoch]).shuffle(&mut v);
    v
}

/// `indices` shuffled for `epoch` while keeping the records of a few groups together, for
/// volume datasets (BraTS) whose slices share one decode: groups are shuffled, then records
/// are shuffled within windows of `window` consecutive groups. With `window` no larger than
/// `VolumeOptions::cache_volumes`, each case is decoded about once per epoch.
pub fn epoch_order_grouped(
    ds: &dyn Dataset,
    indices: &[usize],
    window: usize,
    seed: u64,
    epoch: u64,
) -> Vec<usize> {
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> =
        std::collections::BTreeMap::new();
    for &i in indices {
        groups
            .entry(ds.records()[i].group.as_str())
            .or_default()
            .push(i);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    let mut rng = Rng::from_parts(&[seed, 0x6E0C, epoch]);
    rng.shuffle(&mut groups);
    let mut out = Vec::with_capacity(indices.len());
    for chunk in groups.chunks(window.max(1)) {
        let mut w: Vec<usize> = chunk.iter().flatten().copied().collect();
        rng.shuffle(&mut w);
        out.extend(w);
    }
    out
}

/// Stacks prepared samples into a batch.
pub fn collate(indices: Vec<usize>, samples: Vec<Sample>) -> Batch {
    let views: Vec<_> = samples.iter().map(|s| s.image.view()).collect();
    let images = ndarray::stack(Axis(0), &views).expect("samples share the preset's size");
    let target = match samples.first().map(|s| &s.target) {
        Some(Target::Mask(_)) => {
            let masks: Vec<_> = samples
                .iter()
                .map(|s| match &s.target {
                    Target::Mask(m) => m.mapv(i64::from),
                    Target::Class(_) => unreachable!("a dataset has one task"),
                })
                .collect();
            let views: Vec<_> = masks.iter().map(|m| m.view()).collect();
            BatchTarget::Masks(
                ndarray::stack(Axis(0), &views).expect("masks share the preset's size"),
            )
        }
        _ => BatchTarget::Classes(
            samples
                .iter()
                .map(|s| match s.target {
                    Target::Class(c) => c as i64,
                    Target::Mask(_) => unreachable!("a dataset has one task"),
                })
                .collect(),
        ),
    };
    Batch {
        indices,
        images,
        target,
    }
}

/// Iterator of batches prepared in the background.
pub struct BatchLoader {
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
    len: usize,
}

impl BatchLoader {
    /// Starts preparing batches of `order` (record indices). `augment` is for training only;
    /// the augmentation of the sample at position `p` is seeded by (seed, epoch, p), so it
    /// does not depend on thread scheduling.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        order: Vec<usize>,
        pre: Preprocess,
        augment: Option<Augment>,
        cfg: &LoaderConfig,
        epoch: u64,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::config("batch_size must be positive"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("dka-data-{i}"))
            .build()
            .map_err(|e| {
                DataError::config(format!(
                    "cannot start {} decoding threads ({e})",
                    cfg.threads
                ))
            })?;
        let bs = cfg.batch_size;
        let len = if cfg.drop_last {
            order.len() / bs
        } else {
            order.len().div_ceil(bs)
        };
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let seed = cfg.seed;
        let worker = std::thread::Builder::new()
            .name("dka-data-prefetch".into())
            .spawn(move || {
                for (b, chunk) in order.chunks(bs).take(len).enumerate() {
                    let samples: Result<Vec<Sample>> = pool.install(|| {
                        chunk
                            .par_iter()
                            .enumerate()
                            .map(|(k, &i)| {
                                let pos = (b * bs + k) as u64;
                                let mut rng = Rng::from_parts(&[seed, epoch, pos]);
                                dataset.sample(i, &pre, augment.as_ref().map(|a| (a, &mut rng)))
                            })
                            .collect()
                    });
                    let failed = samples.is_err();
                    let msg = samples.map(|s| collate(chunk.to_vec(), s));
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::config(format!("cannot start the prefetch thread ({e})")))?;
        Ok(BatchLoader {
            rx: Some(rx),
            worker: Some(worker),
            len,
        })
    }

    /// Number of batches this loader yields.
    pub fn num_batches(&self) -> usize {
        self.len
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel makes the worker stop at its next send.
        drop(self.rx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
