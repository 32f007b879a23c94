//! What a decoded cache is keyed by: everything that decides its pixels and targets, and
//! nothing that is applied later (normalisation happens on the device).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::files::hex;
use crate::image_set::rel_id;
use crate::manifest::Manifest;
use crate::options::LoaderOptions;
use crate::preset::{Interpolation, Preprocess, ResizeMode};

/// Bumped whenever the decoded pixels of an unchanged input would change (decoders, filters,
/// file layout), so that older caches are rebuilt rather than reused.
pub const CACHE_FORMAT: u32 = 1;

/// The geometric part of a [`Preprocess`]: what the cached pixels depend on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// (height, width).
    pub size: (u32, u32),
    pub interpolation: Interpolation,
    pub resize: ResizeMode,
    pub crop_pct: Option<f32>,
}

impl From<&Preprocess> for Geometry {
    fn from(p: &Preprocess) -> Self {
        Geometry {
            size: p.size,
            interpolation: p.interpolation,
            resize: p.resize,
            crop_pct: p.crop_pct,
        }
    }
}

/// One cached sample's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// Files relative to the dataset root, `/`-separated.
    pub files: Vec<String>,
    /// SHA-256 of each file, from the manifest.
    pub sha256: Vec<String>,
    pub class: Option<usize>,
}

/// Everything the key hashes (also written to the cache's `meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub format: u32,
    pub dka_data_version: String,
    pub dataset: String,
    pub classes: Vec<String>,
    /// The manifest's loader options, less those that only steer scanning (threads,
    /// `skip_bad`, the check level, the volume LRU size).
    pub options: LoaderOptions,
    pub geometry: Geometry,
    /// In cache order (the order of the indices given).
    pub records: Vec<KeyRecord>,
}

/// A cache's identity: its material and the SHA-256 of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheKey {
    pub material: KeyMaterial,
    hex: String,
}

impl CacheKey {
    /// The key of records `indices` of `ds` preprocessed by `pre`, with file hashes and
    /// loader options from `manifest` (which must have been written for `ds` and hold every
    /// file of these records).
    pub fn new(
        ds: &dyn Dataset,
        indices: &[usize],
        pre: &Preprocess,
        manifest: &Manifest,
    ) -> Result<CacheKey> {
        if manifest.dataset != ds.name() {
            return Err(DataError::cache(
                ds.root(),
                format!(
                    "the manifest was written for `{}`, not `{}`",
                    manifest.dataset,
                    ds.name()
                ),
            ));
        }
        let n = ds.records().len();
        let mut records = Vec::with_capacity(indices.len());
        for &i in indices {
            let r = ds.records().get(i).ok_or_else(|| {
                DataError::cache(
                    ds.root(),
                    format!("record index {i} is out of range (0..{n})"),
                )
            })?;
            let files: Vec<String> = r.files.iter().map(|f| rel_id(f)).collect();
            let sha256 = files
                .iter()
                .map(|f| {
                    manifest.sha256.get(f).cloned().ok_or_else(|| {
                        DataError::cache(
                            ds.root().join(f),
                            format!("file of `{}` has no hash in the manifest", r.id),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            records.push(KeyRecord {
                id: r.id.clone(),
                files,
                sha256,
                class: r.class,
            });
        }
        // Options that only steer scanning, not pixels, stay out of the key.
        let mut options = manifest.options.clone();
        options.threads = 0;
        options.skip_bad = false;
        options.check = Default::default();
        options.volume.cache_volumes = 0;
        let material = KeyMaterial {
            format: CACHE_FORMAT,
            dka_data_version: env!("CARGO_PKG_VERSION").to_string(),
            dataset: ds.name().to_string(),
            classes: ds.task().classes().to_vec(),
            options,
            geometry: Geometry::from(pre),
            records,
        };
        Ok(CacheKey::from_material(material))
    }

    pub(crate) fn from_material(material: KeyMaterial) -> CacheKey {
        let bytes = serde_json::to_vec(&material).expect("key material serialises");
        CacheKey {
            hex: hex(&Sha256::digest(&bytes)),
            material,
        }
    }

    /// The full SHA-256, hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The cache's folder name: the first 16 hex digits.
    pub fn short(&self) -> &str {
        &self.hex[..16]
    }
}
