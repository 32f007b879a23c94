//! A decoded cache per split and preprocessing: every image of a split decoded, cropped and
//! resized once, stored as 8-bit planes in a memory-mapped file, and served from there to
//! every later epoch and run.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use dka_data::*;
//! # fn main() -> Result<()> {
//! # let ds: Arc<dyn Dataset> = Arc::from(open_dataset("busi-cls", "/data/BUSI".as_ref(), &LoaderOptions::default())?);
//! # let spec = SplitSpec::default();
//! # let split = make_split(ds.as_ref(), &spec)?;
//! # let manifest = Manifest::build(ds.as_ref(), &spec, &LoaderOptions::default(), &split)?;
//! let pre = Preprocess::default();
//! let (train, stats) = DecodedSplit::open_or_build(
//!     ds.as_ref(), &split.train, &pre, &manifest, "cache".as_ref(), 2, &|_, _| {})?;
//! let train = Arc::new(train);
//! let cfg = LoaderConfig::default();
//! for epoch in 0..10 {
//!     let order = epoch_order(&(0..train.len()).collect::<Vec<_>>(), cfg.seed, epoch);
//!     for batch in CachedLoader::new(train.clone(), order, Some(Augment::default()), &cfg, epoch)? {
//!         let batch = batch?; // images: (B, 3, H, W) u8; normalise with `normalize` (or on the device)
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! On disk, `<cache_dir>/<first 16 hex of the key>/` holds `images.u8` (N, 3, H, W),
//! `masks.u8` (N, H, W; segmentation only) and `meta.json` (shapes, targets, content
//! extents, the key material and this crate's version). Files are built under temporary
//! names in that folder and renamed into place, `meta.json` last, so a reader never sees a
//! half-written cache; when two processes build the same key at once, both results are
//! identical and the last rename wins. A cache whose files do not match `meta.json` (a
//! truncated copy, a foreign key) is rebuilt, with a warning.
//!
//! Files are memory-mapped read-only: nothing in this crate writes to a published file
//! (rebuilding replaces it by rename), and nothing else should.

mod build;
mod key;
mod loader;

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayView2, ArrayView3};
use serde::{Deserialize, Serialize};

pub use key::{CacheKey, Geometry, KeyMaterial, KeyRecord, CACHE_FORMAT};
pub use loader::{CachedLoader, U8Batch, U8Target};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::manifest::Manifest;
use crate::preset::Preprocess;

pub(crate) const IMAGES: &str = "images.u8";
pub(crate) const MASKS: &str = "masks.u8";
pub(crate) const META: &str = "meta.json";

/// `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    key: String,
    material: KeyMaterial,
    len: usize,
    /// (height, width) of every image.
    size: (u32, u32),
    segmentation: bool,
    /// Class per position (classification).
    classes: Option<Vec<i64>>,
    /// (height, width) of each image's content at the top-left (the rest is padding).
    extents: Vec<(u32, u32)>,
    images_bytes: u64,
    masks_bytes: u64,
    build_seconds: f64,
}

/// How [`DecodedSplit::open_or_build`] got its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Opened as it was.
    Reused,
    /// There was none: built.
    Built,
    /// There was one, but it did not match its `meta.json` (truncated, corrupt): rebuilt.
    Rebuilt,
}

/// What opening a cache cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats {
    pub outcome: CacheOutcome,
    /// Samples decoded (0 when reused).
    pub decoded: usize,
    /// Wall time of the whole call.
    pub seconds: f64,
    /// The cache's folder.
    pub dir: PathBuf,
    /// Bytes of image and mask data.
    pub bytes: u64,
}

/// A read-only memory map, or nothing for an empty file (empty files cannot be mapped).
#[derive(Debug)]
enum Bytes {
    Map(Mmap),
    Empty,
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Empty => &[],
        }
    }

    fn open(path: &Path, expected: u64) -> std::result::Result<Bytes, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len != expected {
            return Err(format!(
                "{} holds {len} bytes, meta.json says {expected}",
                path.display()
            ));
        }
        if len == 0 {
            return Ok(Bytes::Empty);
        }
        // SAFETY: published cache files are never written in place (see the module docs).
        unsafe { Mmap::map(&f) }
            .map(Bytes::Map)
            .map_err(|e| format!("{}: cannot map ({e})", path.display()))
    }
}

/// One split, decoded and preprocessed (geometry only), memory-mapped.
#[derive(Debug)]
pub struct DecodedSplit {
    dir: PathBuf,
    meta: Meta,
    /// Dataset record index per position (as given when opened).
    records: Vec<usize>,
    images: Bytes,
    masks: Option<Bytes>,
}

impl DecodedSplit {
    /// Opens the cache of records `indices` of `ds` under `pre`'s geometry, or builds it
    /// (decoding on `threads` threads, volumes once per case) when there is none or the one
    /// there is broken. `manifest` (written for `ds`) supplies file hashes and loader options
    /// for the key. `progress(done, total)` is called from the decoding threads.
    pub fn open_or_build(
        ds: &dyn Dataset,
        indices: &[usize],
        pre: &Preprocess,
        manifest: &Manifest,
        cache_dir: &Path,
        threads: usize,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(Self, CacheStats)> {
        let t0 = std::time::Instant::now();
        let key = CacheKey::new(ds, indices, pre, manifest)?;
        let dir = cache_dir.join(key.short());
        let outcome = match Self::open(&dir, &key, indices) {
            Ok(Some(split)) => {
                let stats = CacheStats {
                    outcome: CacheOutcome::Reused,
                    decoded: 0,
                    seconds: t0.elapsed().as_secs_f64(),
                    bytes: split.meta.images_bytes + split.meta.masks_bytes,
                    dir,
                };
                return Ok((split, stats));
            }
            Ok(None) => CacheOutcome::Built,
            Err(problem) => {
                tracing::warn!(
                    "{}: broken decoded cache ({problem}); rebuilding",
                    dir.display()
                );
                CacheOutcome::Rebuilt
            }
        };
        let decoded = build::build(ds, indices, pre, &key, &dir, threads, progress)?;
        let split = Self::open(&dir, &key, indices)
            .map_err(|p| DataError::cache(&dir, format!("just built, but {p}")))?
            .ok_or_else(|| DataError::cache(&dir, "just built, but meta.json is missing"))?;
        let stats = CacheStats {
            outcome,
            decoded,
            seconds: t0.elapsed().as_secs_f64(),
            bytes: split.meta.images_bytes + split.meta.masks_bytes,
            dir,
        };
        Ok((split, stats))
    }

    /// `Ok(None)`: no cache there; `Err`: a cache that does not match its meta or key.
    fn open(
        dir: &Path,
        key: &CacheKey,
        indices: &[usize],
    ) -> std::result::Result<Option<Self>, String> {
        let meta_path = dir.join(META);
        let bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", meta_path.display())),
        };
        let meta: Meta = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a cache meta.json ({e})", meta_path.display()))?;
        if meta.key != key.hex() || meta.material != key.material {
            return Err(format!("{} is for another key", meta_path.display()));
        }
        let (h, w) = (meta.size.0 as u64, meta.size.1 as u64);
        let n = meta.len as u64;
        if meta.len != indices.len()
            || meta.extents.len() != meta.len
            || meta.images_bytes != n * 3 * h * w
            || meta.masks_bytes != if meta.segmentation { n * h * w } else { 0 }
            || meta.classes.as_ref().is_some_and(|c| c.len() != meta.len)
            || meta.segmentation == meta.classes.is_some()
        {
            return Err(format!("{} is inconsistent", meta_path.display()));
        }
        let images = Bytes::open(&dir.join(IMAGES), meta.images_bytes)?;
        let masks = if meta.segmentation {
            Some(Bytes::open(&dir.join(MASKS), meta.masks_bytes)?)
        } else {
            None
        };
        Ok(Some(DecodedSplit {
            dir: dir.to_path_buf(),
            records: indices.to_vec(),
            meta,
            images,
            masks,
        }))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.meta.len
    }

    pub fn is_empty(&self) -> bool {
        self.meta.len == 0
    }

    /// (height, width) of every image.
    pub fn image_size(&self) -> (u32, u32) {
        self.meta.size
    }

    /// The geometry the images were made with.
    pub fn geometry(&self) -> Geometry {
        self.meta.material.geometry
    }

    pub fn is_segmentation(&self) -> bool {
        self.meta.segmentation
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The full key (SHA-256 hex).
    pub fn key(&self) -> &str {
        &self.meta.key
    }

    /// Dataset record index of each position.
    pub fn records(&self) -> &[usize] {
        &self.records
    }

    /// Record id of position `pos`.
    pub fn id(&self, pos: usize) -> &str {
        &self.meta.material.records[pos].id
    }

    fn plane(&self) -> usize {
        (self.meta.size.0 * self.meta.size.1) as usize
    }

    /// (3, H, W) image at position `pos` (panics when `pos >= len()`).
    pub fn image(&self, pos: usize) -> ArrayView3<'_, u8> {
        let (h, w) = (self.meta.size.0 as usize, self.meta.size.1 as usize);
        let n = 3 * self.plane();
        ArrayView3::from_shape((3, h, w), &self.images.as_slice()[pos * n..(pos + 1) * n])
            .expect("the slice holds one image")
    }

    /// (H, W) class map at `pos` (255 = padding), for segmentation.
    pub fn mask(&self, pos: usize) -> Option<ArrayView2<'_, u8>> {
        let (h, w) = (self.meta.size.0 as usize, self.meta.size.1 as usize);
        let n = self.plane();
        self.masks.as_ref().map(|m| {
            ArrayView2::from_shape((h, w), &m.as_slice()[pos * n..(pos + 1) * n])
                .expect("the slice holds one mask")
        })
    }

    /// Class index at `pos`, for classification.
    pub fn class(&self, pos: usize) -> Option<i64> {
        self.meta.classes.as_ref().map(|c| c[pos])
    }

    /// (height, width) of the image content at `pos`, at the top-left; the rest is padding.
    pub fn extent(&self, pos: usize) -> (u32, u32) {
        self.meta.extents[pos]
    }

    pub(crate) fn image_bytes(&self, pos: usize) -> &[u8] {
        let n = 3 * self.plane();
        &self.images.as_slice()[pos * n..(pos + 1) * n]
    }

    pub(crate) fn mask_bytes(&self, pos: usize) -> Option<&[u8]> {
        let n = self.plane();
        self.masks
            .as_ref()
            .map(|m| &m.as_slice()[pos * n..(pos + 1) * n])
    }
}
