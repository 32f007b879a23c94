//! `open_dataset` (names to loaders) and `inspect`, the library side of
//! `dka data inspect --dataset <name> --root <dir> [--fraction r --draw k] [--skip-bad]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::manifest::Manifest;
use crate::options::LoaderOptions;
use crate::sample::{Skipped, SplitName, Task};
use crate::split::{make_split, Split, SplitSpec};
use crate::{brats, busi, covid, csv_generic, folder, isic2018, isic2019, mni};

/// Names `open_dataset` knows.
pub const DATASETS: [&str; 12] = [
    "isic2019",
    "isic2018",
    "busi-cls",
    "busi-seg",
    "brats",
    "covid",
    "folder",
    "csv",
    "mni152",
    "mni152-slab",
    "colin27",
    "colin27-gm-slab",
];

fn open_inner(name: &str, root: &Path, opts: &LoaderOptions) -> Result<Box<dyn Dataset>> {
    if !root.exists() {
        return Err(DataError::MissingFile {
            path: root.to_path_buf(),
            what: format!("the {name} dataset folder"),
        });
    }
    Ok(match name {
        "isic2019" => Box::new(isic2019::open(root, opts)?),
        "isic2018" => Box::new(isic2018::open(root, opts)?),
        "busi-cls" => Box::new(busi::open(root, false, opts)?),
        "busi-seg" => Box::new(busi::open(root, true, opts)?),
        "brats" => Box::new(brats::open(root, opts)?),
        "covid" => Box::new(covid::open(root, opts)?),
        "folder" => Box::new(folder::open(root, opts)?),
        "csv" => Box::new(csv_generic::open(root, opts)?),
        "mni152" => Box::new(mni::open_mni152(root, opts)?),
        "mni152-slab" => Box::new(mni::open_mni152_slab(root, opts)?),
        "colin27" => Box::new(mni::open_colin27(root, opts)?),
        "colin27-gm-slab" => Box::new(mni::open_colin27_gm_slab(root, opts)?),
        _ => {
            return Err(DataError::UnknownDataset {
                name: name.to_string(),
                known: DATASETS.iter().map(|s| s.to_string()).collect(),
            })
        }
    })
}

/// Scans the release `name` unpacked at `root`. Scanning (header checks, volume scans) runs
/// on a pool of `opts.threads` threads, or rayon's global pool when 0.
pub fn open_dataset(name: &str, root: &Path, opts: &LoaderOptions) -> Result<Box<dyn Dataset>> {
    if opts.threads == 0 {
        return open_inner(name, root, opts);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| DataError::config(format!("cannot start {} threads ({e})", opts.threads)))?;
    pool.install(|| open_inner(name, root, opts))
}

/// Counts per split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitCounts {
    /// Samples per stratum (per class for classification), in `InspectReport::strata` order.
    pub per_stratum: Vec<usize>,
    pub samples: usize,
    /// Split units (images, lesions, cases).
    pub groups: usize,
}

/// What `inspect` found.
#[derive(Debug, Clone)]
pub struct InspectReport {
    pub dataset: String,
    pub root: PathBuf,
    pub task: Task,
    pub strata: Vec<String>,
    pub counts: BTreeMap<SplitName, SplitCounts>,
    /// Files `skip_bad` left out (empty without it: a bad file is an error then).
    pub skipped: Vec<Skipped>,
    pub split: Split,
    pub manifest: Manifest,
    /// Where the manifest was written, if asked.
    pub manifest_path: Option<PathBuf>,
}

impl InspectReport {
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }
}

/// Builds the dataset and its split, writes the manifest (atomically) to `manifest_out` if
/// given, and reports counts per split.
pub fn inspect(
    name: &str,
    root: &Path,
    opts: &LoaderOptions,
    spec: &SplitSpec,
    manifest_out: Option<&Path>,
) -> Result<InspectReport> {
    let ds = open_dataset(name, root, opts)?;
    let split = make_split(ds.as_ref(), spec)?;
    let manifest = Manifest::build(ds.as_ref(), spec, opts, &split)?;
    if let Some(p) = manifest_out {
        manifest.write(p)?;
    }
    let strata = ds.strata();
    let mut counts = BTreeMap::new();
    for s in SplitName::ALL {
        let idx = split.get(s);
        let mut per_stratum = vec![0; strata.len().max(1)];
        let mut groups = std::collections::BTreeSet::new();
        for &i in idx {
            let r = &ds.records()[i];
            if let Some(c) = per_stratum.get_mut(r.stratum) {
                *c += 1;
            }
            groups.insert(r.group.as_str());
        }
        counts.insert(
            s,
            SplitCounts {
                per_stratum,
                samples: idx.len(),
                groups: groups.len(),
            },
        );
    }
    Ok(InspectReport {
        dataset: ds.name().to_string(),
        root: ds.root().to_path_buf(),
        task: ds.task().clone(),
        strata,
        counts,
        skipped: ds.skipped().to_vec(),
        split,
        manifest,
        manifest_path: manifest_out.map(Path::to_path_buf),
    })
}

/// A default manifest file name for a spec, e.g. `busi-cls-r0.0125-d0-s0.json`.
pub fn manifest_file_name(dataset: &str, spec: &SplitSpec) -> String {
    format!(
        "{dataset}-r{}-d{}-s{}.json",
        spec.train_fraction, spec.draw, spec.seed
    )
}

impl fmt::Display for InspectReport {
    /// A table: one row per stratum, one column per split.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.task.is_segmentation() {
            "segmentation"
        } else {
            "classification"
        };
        writeln!(f, "{} ({kind}) at {}", self.dataset, self.root.display())?;
        let w = self
            .strata
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(7);
        write!(f, "{:w$}", "stratum")?;
        for s in SplitName::ALL {
            write!(f, " {:>8}", s.as_str())?;
        }
        writeln!(f)?;
        for (k, name) in self.strata.iter().enumerate() {
            write!(f, "{name:w$}")?;
            for s in SplitName::ALL {
                write!(
                    f,
                    " {:>8}",
                    self.counts[&s].per_stratum.get(k).copied().unwrap_or(0)
                )?;
            }
            writeln!(f)?;
        }
        write!(f, "{:w$}", "samples")?;
        for s in SplitName::ALL {
            write!(f, " {:>8}", self.counts[&s].samples)?;
        }
        writeln!(f)?;
        write!(f, "{:w$}", "groups")?;
        for s in SplitName::ALL {
            write!(f, " {:>8}", self.counts[&s].groups)?;
        }
        writeln!(f)?;
        writeln!(f, "skipped bad files: {}", self.skipped.len())?;
        if let Some(p) = &self.manifest_path {
            writeln!(f, "manifest: {}", p.display())?;
        }
        Ok(())
    }
}
