//! Split manifests: which files are in which split, with a SHA-256 per file, written
//! atomically (temp file + rename) as JSON, and re-loadable into the same split. File hashes
//! can come from a per-machine table ([`Manifest::build_cached`]); [`Manifest::content_hash`]
//! names a manifest's content in one string.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::file_hashes::{HashCache, HashStats};
use crate::files::{hex, sha256_file, write_atomic};
use crate::image_set::rel_id;
use crate::options::LoaderOptions;
use crate::sample::{Skipped, SplitName, Task};
use crate::split::{Split, SplitSpec};

pub const MANIFEST_VERSION: u32 = 1;

/// One sample in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub id: String,
    /// Files relative to the root, `/`-separated; their hashes are in `Manifest::sha256`.
    pub files: Vec<String>,
    /// Class name (classification only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A written-down split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub dataset: String,
    pub root: PathBuf,
    pub task: Task,
    pub spec: SplitSpec,
    pub options: LoaderOptions,
    /// Files `skip_bad` left out.
    pub skipped: Vec<Skipped>,
    /// SHA-256 (hex) of every file any entry uses.
    pub sha256: BTreeMap<String, String>,
    pub train: Vec<ManifestEntry>,
    pub val: Vec<ManifestEntry>,
    pub test: Vec<ManifestEntry>,
}

/// What [`Manifest::content_hash`] hashes: everything that decides which pixels and labels a
/// run sees, and nothing about where the release lies on disk.
#[derive(Serialize)]
struct Canonical<'a> {
    version: u32,
    dataset: &'a str,
    task: &'a Task,
    options: &'a LoaderOptions,
    sha256: &'a BTreeMap<String, String>,
    train: &'a [ManifestEntry],
    val: &'a [ManifestEntry],
    test: &'a [ManifestEntry],
}

impl Manifest {
    /// Writes down `split` of `ds`, hashing every file it uses.
    pub fn build(
        ds: &dyn Dataset,
        spec: &SplitSpec,
        options: &LoaderOptions,
        split: &Split,
    ) -> Result<Manifest> {
        Ok(Self::build_cached(ds, spec, options, split, None)?.0)
    }

    /// Like [`Manifest::build`], with file hashes remembered in `<hash_cache>/file-hashes.tsv`
    /// by (absolute path, size, mtime) so that unchanged files are not read again (see
    /// [`crate::file_hashes`]). `None` hashes every file.
    pub fn build_cached(
        ds: &dyn Dataset,
        spec: &SplitSpec,
        options: &LoaderOptions,
        split: &Split,
        hash_cache: Option<&Path>,
    ) -> Result<(Manifest, HashStats)> {
        let classes = ds.task().classes();
        let entries = |idx: &[usize]| -> Vec<ManifestEntry> {
            idx.iter()
                .map(|&i| {
                    let r = &ds.records()[i];
                    ManifestEntry {
                        id: r.id.clone(),
                        files: r.files.iter().map(|f| rel_id(f)).collect(),
                        label: r.class.map(|c| classes[c].clone()),
                    }
                })
                .collect()
        };
        let (train, val, test) = (
            entries(&split.train),
            entries(&split.val),
            entries(&split.test),
        );
        let files: BTreeSet<String> = [&train, &val, &test]
            .iter()
            .flat_map(|v| v.iter().flat_map(|e| e.files.iter().cloned()))
            .collect();
        let cache = match hash_cache {
            Some(dir) => HashCache::open(dir)?,
            None => HashCache::none(),
        };
        let (sha256, stats) = cache.hash_files(ds.root(), &files)?;
        let m = Manifest {
            version: MANIFEST_VERSION,
            dataset: ds.name().to_string(),
            root: ds.root().to_path_buf(),
            task: ds.task().clone(),
            spec: *spec,
            options: options.clone(),
            skipped: ds.skipped().to_vec(),
            sha256,
            train,
            val,
            test,
        };
        Ok((m, stats))
    }

    /// SHA-256 (hex) of the manifest's content: format version, dataset, task, loader
    /// options, every split's entries and every file's hash (not the root, the spec that drew
    /// the split, nor the skip list). Equal content, equal hash, wherever the data lies.
    pub fn content_hash(&self) -> String {
        let c = Canonical {
            version: self.version,
            dataset: &self.dataset,
            task: &self.task,
            options: &self.options,
            sha256: &self.sha256,
            train: &self.train,
            val: &self.val,
            test: &self.test,
        };
        let bytes = serde_json::to_vec(&c).expect("manifest content serialises");
        hex(&Sha256::digest(&bytes))
    }

    pub fn entries(&self, name: SplitName) -> &[ManifestEntry] {
        match name {
            SplitName::Train => &self.train,
            SplitName::Val => &self.val,
            SplitName::Test => &self.test,
        }
    }

    /// Writes the manifest atomically: a temporary file in the same folder, then a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| DataError::Manifest {
            path: path.to_path_buf(),
            problem: format!("cannot serialise ({e})"),
        })?;
        write_atomic(path, &json)
    }

    /// Reads a manifest (without checking the files; see [`Manifest::resolve`]).
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| DataError::Manifest {
            path: path.to_path_buf(),
            problem: format!("not a valid manifest ({e})"),
        })?;
        if m.version != MANIFEST_VERSION {
            return Err(DataError::Manifest {
                path: path.to_path_buf(),
                problem: format!(
                    "version {} (this build reads {MANIFEST_VERSION})",
                    m.version
                ),
            });
        }
        Ok(m)
    }

    /// Re-hashes every file under `root` (in parallel); the first mismatch is an error.
    pub fn verify(&self, root: &Path) -> Result<()> {
        let found: Vec<(String, Result<String>)> = self
            .sha256
            .par_iter()
            .map(|(f, _)| (f.clone(), sha256_file(&root.join(f))))
            .collect();
        for (f, got) in found {
            let got = got?;
            let want = &self.sha256[&f];
            if &got != want {
                return Err(DataError::HashMismatch {
                    path: root.join(&f),
                    expected: want.clone(),
                    found: got,
                });
            }
        }
        Ok(())
    }

    /// Maps the manifest back onto `ds` (scanned from the same release, possibly moved to
    /// another folder): every id must exist with the same label, and every file must hash as
    /// recorded. `path` is only used in error messages.
    pub fn resolve(&self, ds: &dyn Dataset, path: &Path) -> Result<Split> {
        let err = |problem: String| DataError::Manifest {
            path: path.to_path_buf(),
            problem,
        };
        if ds.name() != self.dataset {
            return Err(err(format!(
                "written for `{}`, not `{}`",
                self.dataset,
                ds.name()
            )));
        }
        let by_id: HashMap<&str, usize> = ds
            .records()
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let classes = ds.task().classes();
        let mut split = Split::default();
        for name in SplitName::ALL {
            for e in self.entries(name) {
                let &i = by_id.get(e.id.as_str()).ok_or_else(|| {
                    err(format!(
                        "{} sample `{}` is not in the dataset at {}",
                        name.as_str(),
                        e.id,
                        ds.root().display()
                    ))
                })?;
                let label = ds.records()[i].class.map(|c| classes[c].clone());
                if label != e.label {
                    return Err(err(format!(
                        "sample `{}` is labelled {:?} in the manifest but {:?} in the dataset",
                        e.id, e.label, label
                    )));
                }
                split.get_mut(name).push(i);
            }
            split.get_mut(name).sort_unstable();
        }
        self.verify(ds.root())?;
        Ok(split)
    }
}
