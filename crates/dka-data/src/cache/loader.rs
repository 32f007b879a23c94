//! Batches from a [`DecodedSplit`]: assembled in a background thread with prefetch, the
//! training augmentation (random resized crop + flip) applied to the cached 8-bit images.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use ndarray::{Array3, Array4};
use rayon::prelude::*;

use super::DecodedSplit;
use crate::augment::Augment;
use crate::error::{DataError, Result};
use crate::loader::{Batch, BatchTarget, LoaderConfig};
use crate::normalize::{normalize, write_chw};
use crate::preset::{Interpolation, Preprocess, IGNORE_INDEX};
use crate::resize::{algorithm, fit};
use crate::rng::Rng;

/// Labels of a [`U8Batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum U8Target {
    /// (B) class indices.
    Classes(Vec<i64>),
    /// (B, H, W) class maps; 255 ([`IGNORE_INDEX`]) marks padding to skip.
    Masks(Array3<u8>),
}

/// One batch of 8-bit images, to be normalised where it is used (see [`crate::normalize`]).
#[derive(Debug, Clone, PartialEq)]
pub struct U8Batch {
    /// Positions in the split, in batch order.
    pub indices: Vec<usize>,
    /// Dataset record indices, in batch order.
    pub records: Vec<usize>,
    /// (B, 3, H, W).
    pub images: Array4<u8>,
    pub target: U8Target,
}

impl U8Batch {
    /// The f32 batch the uncached [`crate::BatchLoader`] yields: images normalised by `pre`
    /// on the CPU, masks widened to i64, indices = record indices.
    pub fn to_batch(&self, pre: &Preprocess) -> Batch {
        Batch {
            indices: self.records.clone(),
            images: normalize(&self.images, pre),
            target: match &self.target {
                U8Target::Classes(c) => BatchTarget::Classes(c.clone()),
                U8Target::Masks(m) => BatchTarget::Masks(m.mapv(i64::from)),
            },
        }
    }
}

/// Writes the sample at `pos` into `image` (3 * H * W) and `mask` (H * W): a copy, or, with
/// `augment`, a random resized crop of the cached content (drawn by `rng`) resized back to
/// the cache's size by its own geometry, flipped with the augmentation's probability.
fn fill(
    split: &DecodedSplit,
    pos: usize,
    augment: Option<(&Augment, &mut Rng)>,
    image: &mut [u8],
    mask: Option<&mut [u8]>,
) -> Result<()> {
    let src = split.image_bytes(pos);
    let Some((aug, rng)) = augment else {
        image.copy_from_slice(src);
        if let (Some(dst), Some(m)) = (mask, split.mask_bytes(pos)) {
            dst.copy_from_slice(m);
        }
        return Ok(());
    };
    let g = split.geometry();
    let (h, w) = g.size;
    let plane = (h * w) as usize;
    let (eh, ew) = split.extent(pos);
    let drawn = aug.draw(ew, eh, rng);
    let crop = drawn.crop.unwrap_or((0, 0, ew, eh));
    // Packed RGB resizes about 2.5x faster than three planes: interleave the crop, resize,
    // and split the result back into planes.
    let (cx, cy, cw, ch) = crop;
    let (cw_, w_) = (cw as usize, w as usize);
    let mut packed = vec![0u8; cw_ * ch as usize * 3];
    for y in 0..ch as usize {
        let row = &mut packed[y * cw_ * 3..(y + 1) * cw_ * 3];
        for c in 0..3 {
            let start = c * plane + (cy as usize + y) * w_ + cx as usize;
            for (x, &v) in src[start..start + cw_].iter().enumerate() {
                row[x * 3 + c] = v;
            }
        }
    }
    let alg = algorithm(g.interpolation);
    let out = fit(
        &packed,
        (cw, ch),
        3,
        (0, 0, cw, ch),
        g.size,
        g.resize,
        alg,
        drawn.flip,
        0,
    )?;
    write_chw(&out, image, plane);
    if let (Some(dst), Some(m)) = (mask, split.mask_bytes(pos)) {
        // Cut the same crop out first, so the mask's sampling grid is the image's exactly.
        let mut cut = Vec::with_capacity(cw_ * ch as usize);
        for y in 0..ch as usize {
            let start = (cy as usize + y) * w_ + cx as usize;
            cut.extend_from_slice(&m[start..start + cw_]);
        }
        let nearest = algorithm(Interpolation::Nearest);
        let full = (0, 0, cw, ch);
        let out = fit(
            &cut,
            (cw, ch),
            1,
            full,
            g.size,
            g.resize,
            nearest,
            drawn.flip,
            IGNORE_INDEX,
        )?;
        dst.copy_from_slice(&out);
    }
    Ok(())
}

/// Assembles the batch of `positions`; the sample at order position `first + k` is augmented
/// with the generator seeded by (seed, epoch, first + k), as in [`crate::BatchLoader`].
fn assemble(
    split: &DecodedSplit,
    positions: &[usize],
    first: usize,
    augment: Option<&Augment>,
    seed: u64,
    epoch: u64,
) -> Result<U8Batch> {
    let (h, w) = split.image_size();
    let (h, w) = (h as usize, w as usize);
    let b = positions.len();
    let mut images = Array4::<u8>::zeros((b, 3, h, w));
    let mut masks = split
        .is_segmentation()
        .then(|| Array3::<u8>::zeros((b, h, w)));
    let img_slices = images
        .as_slice_mut()
        .expect("fresh arrays are contiguous")
        .par_chunks_mut(3 * h * w);
    let mask_slices: Vec<Option<&mut [u8]>> = match &mut masks {
        Some(m) => m
            .as_slice_mut()
            .expect("fresh arrays are contiguous")
            .chunks_mut(h * w)
            .map(Some)
            .collect(),
        None => (0..b).map(|_| None).collect(),
    };
    img_slices
        .zip(mask_slices)
        .enumerate()
        .try_for_each(|(k, (img, mask))| {
            let mut rng = Rng::from_parts(&[seed, epoch, (first + k) as u64]);
            let aug = augment.map(|a| (a, &mut rng));
            fill(split, positions[k], aug, img, mask)
        })?;
    let target = match masks {
        Some(m) => U8Target::Masks(m),
        None => U8Target::Classes(
            positions
                .iter()
                .map(|&p| split.class(p).unwrap_or(0))
                .collect(),
        ),
    };
    Ok(U8Batch {
        indices: positions.to_vec(),
        records: positions.iter().map(|&p| split.records()[p]).collect(),
        images,
        target,
    })
}

/// Iterator of [`U8Batch`]es of a cached split, prepared in the background.
pub struct CachedLoader {
    rx: Option<Receiver<Result<U8Batch>>>,
    worker: Option<JoinHandle<()>>,
    len: usize,
}

impl CachedLoader {
    /// Starts assembling batches of `order` (positions in `split`, e.g. a shuffled
    /// `0..split.len()`), `cfg.threads` threads, `cfg.prefetch` batches ahead. `augment` is
    /// for training only; evaluation data must be read with `None`.
    pub fn new(
        split: Arc<DecodedSplit>,
        order: Vec<usize>,
        augment: Option<Augment>,
        cfg: &LoaderConfig,
        epoch: u64,
    ) -> Result<Self> {
        Self::starting_at(split, order, augment, cfg, epoch, 0)
    }

    /// As [`Self::new`], but without the first `first_batch` batches of `order`; the batches
    /// that follow are exactly those a loader from the start yields (same samples, same
    /// augmentation), so an interrupted epoch resumes where it stopped.
    pub fn starting_at(
        split: Arc<DecodedSplit>,
        order: Vec<usize>,
        augment: Option<Augment>,
        cfg: &LoaderConfig,
        epoch: u64,
        first_batch: usize,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::config("batch_size must be positive"));
        }
        if let Some(&p) = order.iter().find(|&&p| p >= split.len()) {
            return Err(DataError::cache(
                split.dir(),
                format!(
                    "position {p} is out of range (the split holds {})",
                    split.len()
                ),
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("dka-cached-{i}"))
            .build()
            .map_err(|e| {
                DataError::config(format!("cannot start {} loader threads ({e})", cfg.threads))
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
            .name("dka-cached-prefetch".into())
            .spawn(move || {
                for (b, chunk) in order.chunks(bs).take(len).enumerate().skip(first_batch) {
                    let batch = pool
                        .install(|| assemble(&split, chunk, b * bs, augment.as_ref(), seed, epoch));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::config(format!("cannot start the prefetch thread ({e})")))?;
        Ok(CachedLoader {
            rx: Some(rx),
            worker: Some(worker),
            len: len.saturating_sub(first_batch),
        })
    }

    /// Number of batches this loader yields.
    pub fn num_batches(&self) -> usize {
        self.len
    }
}

impl Iterator for CachedLoader {
    type Item = Result<U8Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for CachedLoader {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl DecodedSplit {
    /// The batch of `positions`, without augmentation, assembled on the calling thread.
    pub fn batch(&self, positions: &[usize]) -> Result<U8Batch> {
        if let Some(&p) = positions.iter().find(|&&p| p >= self.len()) {
            return Err(DataError::cache(
                self.dir(),
                format!(
                    "position {p} is out of range (the split holds {})",
                    self.len()
                ),
            ));
        }
        assemble(self, positions, 0, None, 0, 0)
    }
}
