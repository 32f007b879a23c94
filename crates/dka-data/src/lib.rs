//! Dataset loaders for the DKA paper's medical imaging releases, reproducible low-data
//! splits with manifests, and batching with parallel decoding and prefetch.
//!
//! Everything is libtorch-free: samples are `ndarray` arrays; the trainer turns batches into
//! tensors. Flow: [`open_dataset`] scans a release into a [`Dataset`] of [`Record`]s;
//! [`make_split`] draws a [`Split`] from a [`SplitSpec`]; [`Manifest`] writes it down (and
//! re-loads it); [`BatchLoader`] yields [`Batch`]es of `(B, 3, H, W)` images with class
//! indices or `(B, H, W)` masks, preprocessed by a backbone's [`Preprocess`] and, for
//! training only, augmented by an [`Augment`].
//!
//! Decoding is 8-bit throughout (`RawSample` is u8 RGB; resizing uses SIMD u8 filters) and
//! normalisation to f32 happens once, at the end. For many epochs and runs over one split,
//! [`DecodedSplit`] decodes the split once into a memory-mapped cache keyed by the manifest
//! and the preprocessing geometry, and [`CachedLoader`] serves `(B, 3, H, W)` u8 batches from
//! it ([`normalize`] is the CPU reference of the normalisation the trainer does on the
//! device). [`Manifest::build_cached`] remembers file hashes per machine.

pub mod augment;
pub mod brats;
pub mod busi;
pub mod cache;
pub mod covid;
pub mod csv_generic;
pub mod dataset;
pub mod error;
pub mod file_hashes;
pub mod files;
pub mod folder;
pub mod image_io;
pub mod image_set;
pub mod inspect;
pub mod isic2018;
pub mod isic2019;
pub mod loader;
pub mod manifest;
pub mod mni;
pub mod nifti_volume;
pub mod nifti_write;
pub mod normalize;
pub mod options;
pub mod preprocess;
pub mod preset;
pub(crate) mod resize;
pub mod rng;
pub mod sample;
pub mod slices;
pub mod split;
pub mod synth;
pub mod testing;
pub mod volume_ops;

pub use augment::{Augment, RandomResizedCrop};
pub use cache::{
    CacheKey, CacheOutcome, CacheStats, CachedLoader, DecodedSplit, U8Batch, U8Target,
};
pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use file_hashes::{HashCache, HashStats};
pub use inspect::{
    inspect, manifest_file_name, open_dataset, InspectReport, SplitCounts, DATASETS,
};
pub use loader::{
    collate, default_threads, epoch_order, epoch_order_grouped, Batch, BatchLoader, BatchTarget,
    LoaderConfig,
};
pub use manifest::{Manifest, ManifestEntry};
pub use normalize::normalize;
pub use options::{
    CheckLevel, CsvOptions, EmptySlices, LabelMap, LoaderOptions, Modality, VolumeOptions,
};
pub use preprocess::{finish, prepare, prepare_u8};
pub use preset::{
    Interpolation, PixelScale, Preprocess, ResizeMode, U8Sample, IGNORE_INDEX, IMAGENET_MEAN,
    IMAGENET_STD,
};
pub use rng::Rng;
pub use sample::{RawSample, Record, Sample, Skipped, SplitName, Target, Task};
pub use split::{make_split, parse_fraction, train_count, Split, SplitSpec, PAPER_FRACTIONS};
