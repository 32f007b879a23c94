//! Dataset loaders for the DKA paper's medical imaging releases, reproducible low-data
//! splits with manifests, and batching with parallel decoding and prefetch.
//!
//! Everything is libtorch-free: samples are `ndarray` arrays; the trainer turns batches into
//! tensors. Flow: [`open_dataset`] scans a release into a [`Dataset`] of [`Record`]s;
//! [`make_split`] draws a [`Split`] from a [`SplitSpec`]; [`Manifest`] writes it down (and
//! re-loads it); [`BatchLoader`] yields [`Batch`]es of `(B, 3, H, W)` images with class
//! indices or `(B, H, W)` masks, preprocessed by a backbone's [`Preprocess`] and, for
//! training only, augmented by an [`Augment`].

pub mod augment;
pub mod brats;
pub mod busi;
pub mod covid;
pub mod csv_generic;
pub mod error;
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
pub mod options;
pub mod preprocess;
pub mod rng;
pub mod sample;
pub mod slices;
pub mod split;
pub mod testing;
pub mod volume_ops;

pub use augment::{Augment, RandomResizedCrop};
pub use error::{DataError, Result};
pub use inspect::{
    inspect, manifest_file_name, open_dataset, InspectReport, SplitCounts, DATASETS,
};
pub use loader::{
    collate, epoch_order, epoch_order_grouped, Batch, BatchLoader, BatchTarget, LoaderConfig,
};
pub use manifest::{Manifest, ManifestEntry};
pub use options::{
    CheckLevel, CsvOptions, EmptySlices, LabelMap, LoaderOptions, Modality, VolumeOptions,
};
pub use preprocess::{prepare, Interpolation, Preprocess, IMAGENET_MEAN, IMAGENET_STD};
pub use rng::Rng;
pub use sample::{Dataset, RawSample, Record, Sample, Skipped, SplitName, Target, Task};
pub use split::{make_split, parse_fraction, train_count, Split, SplitSpec, PAPER_FRACTIONS};
