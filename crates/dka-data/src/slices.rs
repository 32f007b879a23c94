//! The dataset type behind every volume loader (BraTS, MNI152, Colin27): 3D cases cut into
//! 2D axial slices, with the empty-slice policy applied at scan time and a small LRU cache
//! of decoded cases so that slices of one case share one decode. Intensities are normalised
//! per volume (percentile clip) straight to 8 bits.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::{GrayImage, RgbImage};
use ndarray::Array3;
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image_set::skip_or_fail;
use crate::nifti_volume::{
    axial_axis, axial_slice, normalize_percentile_u8, read_header, read_volume, Affine,
};
use crate::options::{EmptySlices, LoaderOptions};
use crate::rng::{hash_str, Rng};
use crate::sample::SplitName;
use crate::sample::{RawSample, Record, Skipped, Task};

/// Where a case's label map comes from.
#[derive(Debug, Clone)]
pub enum LabelSource {
    /// An integer label volume mapped to classes by `map` (BraTS seg, an atlas).
    Volume {
        path: PathBuf,
        map: fn(f32) -> Option<u8>,
    },
    /// Tissue probability maps; voxel class = argmax(background, maps...) (MNI152 gm/wm).
    Tissue { maps: Vec<PathBuf> },
}

/// One 3D case: absolute paths of its channel volumes and its labels.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    /// One (replicated to RGB) or three (stacked as RGB) intensity volumes.
    pub channels: Vec<PathBuf>,
    pub labels: LabelSource,
}

impl Case {
    fn files(&self) -> Vec<PathBuf> {
        let mut f = self.channels.clone();
        match &self.labels {
            LabelSource::Volume { path, .. } => f.push(path.clone()),
            LabelSource::Tissue { maps } => f.extend(maps.iter().cloned()),
        }
        f
    }
}

/// A decoded case: channels normalised to 8 bits and the class map, all `[i, j, k]`.
#[derive(Debug)]
pub struct CaseVolumes {
    pub channels: Vec<Array3<u8>>,
    pub labels: Array3<u8>,
    pub affine: Affine,
    pub axis: usize,
}

fn shape_of(a: &Array3<f32>) -> [usize; 3] {
    [a.shape()[0], a.shape()[1], a.shape()[2]]
}

/// Reads and maps a case's label map.
fn load_labels(case: &Case) -> Result<(Array3<u8>, Affine)> {
    match &case.labels {
        LabelSource::Volume { path, map } => {
            let v = read_volume(path)?;
            let mut out = Array3::<u8>::zeros(v.data.raw_dim());
            for (o, &x) in out.iter_mut().zip(v.data.iter()) {
                *o = map(x).ok_or_else(|| {
                    DataError::nifti(
                        path,
                        format!("label value {x} is not one this dataset defines"),
                    )
                })?;
            }
            Ok((out, v.header.affine))
        }
        LabelSource::Tissue { maps } => {
            let mut vols = Vec::new();
            for p in maps {
                let mut v = read_volume(p)?;
                let max = v.data.fold(0.0f32, |m, &x| m.max(x));
                if max > 1.0 {
                    v.data.mapv_inplace(|x| x / max);
                }
                if let Some(first) = vols
                    .first()
                    .map(|f: &crate::nifti_volume::Volume| shape_of(&f.data))
                {
                    if first != shape_of(&v.data) {
                        return Err(DataError::nifti(
                            p,
                            format!("shape {:?} differs from {:?}", shape_of(&v.data), first),
                        ));
                    }
                }
                vols.push(v);
            }
            let affine = vols[0].header.affine;
            let out = Array3::from_shape_fn(vols[0].data.raw_dim(), |ix| {
                let mut best = (0u8, 1.0 - vols.iter().map(|v| v.data[ix]).sum::<f32>());
                for (k, v) in vols.iter().enumerate() {
                    if v.data[ix] > best.1 {
                        best = (k as u8 + 1, v.data[ix]);
                    }
                }
                best.0
            });
            Ok((out, affine))
        }
    }
}

fn load_case(case: &Case, percentiles: (f64, f64)) -> Result<CaseVolumes> {
    let (labels, affine) = load_labels(case)?;
    let mut channels = Vec::new();
    for p in &case.channels {
        let v = read_volume(p)?;
        if v.data.shape() != labels.shape() {
            return Err(DataError::nifti(
                p,
                format!(
                    "shape {:?} differs from the label map's {:?}",
                    v.data.shape(),
                    labels.shape()
                ),
            ));
        }
        channels.push(normalize_percentile_u8(
            &v.data,
            percentiles.0,
            percentiles.1,
        ));
    }
    Ok(CaseVolumes {
        axis: axial_axis(&affine),
        channels,
        labels,
        affine,
    })
}

/// Slices of one case that the policy keeps, checking the case's files on the way.
fn scan_case(case: &Case, policy: EmptySlices) -> Result<Vec<usize>> {
    let (dims, affine) = match (&case.labels, policy) {
        (LabelSource::Volume { path, .. }, EmptySlices::KeepAll) => {
            let h = read_header(path)?;
            (h.dims, h.affine)
        }
        _ => {
            let (labels, affine) = load_labels(case)?;
            let axis = axial_axis(&affine);
            let keep: Vec<usize> = (0..labels.shape()[axis])
                .filter(|&z| {
                    let fg = labels
                        .index_axis(ndarray::Axis(axis), z)
                        .iter()
                        .any(|&v| v != 0);
                    fg || match policy {
                        EmptySlices::KeepAll => true,
                        EmptySlices::Drop => false,
                        EmptySlices::KeepFraction(f) => {
                            Rng::from_parts(&[hash_str(&case.id), z as u64]).uniform() < f
                        }
                    }
                })
                .collect();
            let dims = [labels.shape()[0], labels.shape()[1], labels.shape()[2]];
            check_channels(case, dims)?;
            return Ok(keep);
        }
    };
    check_channels(case, dims)?;
    Ok((0..dims[axial_axis(&affine)]).collect())
}

fn check_channels(case: &Case, dims: [usize; 3]) -> Result<()> {
    for p in &case.channels {
        let h = read_header(p)?;
        if h.dims != dims {
            return Err(DataError::nifti(
                p,
                format!("shape {:?} differs from the label map's {:?}", h.dims, dims),
            ));
        }
    }
    Ok(())
}

/// A scanned volume dataset.
#[derive(Debug)]
pub struct SliceDataset {
    name: String,
    root: PathBuf,
    task: Task,
    cases: Vec<Case>,
    records: Vec<Record>,
    /// (case, slice) per record.
    index: Vec<(usize, usize)>,
    skipped: Vec<Skipped>,
    percentiles: (f64, f64),
    cache: Mutex<VecDeque<(usize, Arc<CaseVolumes>)>>,
    cache_cap: usize,
}

impl SliceDataset {
    /// Scans `cases` (in parallel) and cuts them into slice records. With `group_by_case`
    /// a split keeps a case's slices together (BraTS); otherwise each slice is its own group
    /// (single-subject templates).
    pub fn build(
        name: &str,
        root: &Path,
        task: Task,
        cases: Vec<Case>,
        mut skipped: Vec<Skipped>,
        group_by_case: bool,
        opts: &LoaderOptions,
    ) -> Result<Self> {
        let v = &opts.volume;
        let scans: Vec<Result<Vec<usize>>> = cases
            .par_iter()
            .map(|c| scan_case(c, v.empty_slices))
            .collect();
        let mut kept_cases = Vec::new();
        let mut records = Vec::new();
        let mut index = Vec::new();
        for (case, scan) in cases.into_iter().zip(scans) {
            let slices = match scan {
                Ok(s) => s,
                Err(e) => {
                    skip_or_fail(opts, &mut skipped, e)?;
                    continue;
                }
            };
            let ci = kept_cases.len();
            let files: Vec<PathBuf> = case
                .files()
                .iter()
                .map(|f| f.strip_prefix(root).unwrap_or(f).to_path_buf())
                .collect();
            for z in slices {
                let id = format!("{}/z{:03}", case.id, z);
                records.push(Record {
                    group: if group_by_case {
                        case.id.clone()
                    } else {
                        id.clone()
                    },
                    id,
                    files: files.clone(),
                    class: None,
                    stratum: 0,
                    official: None,
                });
                index.push((ci, z));
            }
            kept_cases.push(case);
        }
        Ok(SliceDataset {
            name: name.to_string(),
            root: root.to_path_buf(),
            task,
            cases: kept_cases,
            records,
            index,
            skipped,
            percentiles: v.percentiles,
            cache: Mutex::new(VecDeque::new()),
            cache_cap: v.cache_volumes.max(1),
        })
    }

    /// The same slices under another dataset name.
    pub fn renamed(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Assigns each slice record a split of the release by its slice index `z` (`Some(split)`)
    /// or drops it (`None`); `assign(z, z_min, z_max)` sees the range of the kept slices.
    pub fn with_slabs(mut self, assign: impl Fn(usize, usize, usize) -> Option<SplitName>) -> Self {
        let z_min = self.index.iter().map(|&(_, z)| z).min().unwrap_or(0);
        let z_max = self.index.iter().map(|&(_, z)| z).max().unwrap_or(0);
        let mut records = Vec::new();
        let mut index = Vec::new();
        for (mut r, (c, z)) in self.records.drain(..).zip(self.index.drain(..)) {
            if let Some(split) = assign(z, z_min, z_max) {
                r.official = Some(split);
                records.push(r);
                index.push((c, z));
            }
        }
        self.records = records;
        self.index = index;
        self
    }

    /// Decodes (or fetches from the cache) case `ci`.
    pub fn case(&self, ci: usize) -> Result<Arc<CaseVolumes>> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = cache.iter().position(|(c, _)| *c == ci) {
                let hit = cache.remove(pos).expect("position is in range");
                let vols = hit.1.clone();
                cache.push_front(hit);
                return Ok(vols);
            }
        }
        let vols = Arc::new(load_case(&self.cases[ci], self.percentiles)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.iter().any(|(c, _)| *c == ci) {
            cache.push_front((ci, vols.clone()));
            cache.truncate(self.cache_cap);
        }
        Ok(vols)
    }

    /// The cases, in record order.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }
}

impl Dataset for SliceDataset {
    fn name(&self) -> &str {
        &self.name
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn task(&self) -> &Task {
        &self.task
    }

    fn records(&self) -> &[Record] {
        &self.records
    }

    fn strata(&self) -> Vec<String> {
        vec!["all".into()]
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    fn case_of(&self, index: usize) -> Option<&str> {
        Some(&self.cases[self.index[index].0].id)
    }

    fn read(&self, index: usize) -> Result<RawSample> {
        let (ci, z) = self.index[index];
        let vols = self.case(ci)?;
        Ok(slice_sample(&vols, z))
    }

    /// Decodes each case once for all of its requested slices (without the LRU).
    fn read_many(&self, indices: &[usize]) -> Vec<Result<RawSample>> {
        let mut out: Vec<Option<Result<RawSample>>> = (0..indices.len()).map(|_| None).collect();
        let mut by_case: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (k, &i) in indices.iter().enumerate() {
            by_case.entry(self.index[i].0).or_default().push(k);
        }
        for (ci, ks) in by_case {
            match load_case(&self.cases[ci], self.percentiles) {
                Ok(vols) => {
                    for k in ks {
                        out[k] = Some(Ok(slice_sample(&vols, self.index[indices[k]].1)));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let mut first = Some(e);
                    for k in ks {
                        let err = first.take().unwrap_or_else(|| {
                            DataError::nifti(&self.cases[ci].channels[0], msg.clone())
                        });
                        out[k] = Some(Err(err));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every index belongs to one case"))
            .collect()
    }
}

/// Axial slice `z` of a decoded case as an RGB image (one channel replicated, or three
/// stacked) and its class map.
fn slice_sample(vols: &CaseVolumes, z: usize) -> RawSample {
    let planes: Vec<_> = vols
        .channels
        .iter()
        .map(|c| axial_slice(c.view(), &vols.affine, vols.axis, z))
        .collect();
    let (h, w) = (planes[0].shape()[0], planes[0].shape()[1]);
    let pick = |k: usize| if planes.len() >= 3 { k } else { 0 };
    let (r, g, b) = (&planes[pick(0)], &planes[pick(1)], &planes[pick(2)]);
    let mut rgb = Vec::with_capacity(h * w * 3);
    for ((r, g), b) in r.iter().zip(g.iter()).zip(b.iter()) {
        rgb.extend_from_slice(&[*r, *g, *b]);
    }
    let image = RgbImage::from_raw(w as u32, h as u32, rgb).expect("slice buffer matches its size");
    let lab = axial_slice(vols.labels.view(), &vols.affine, vols.axis, z);
    let mask = GrayImage::from_raw(w as u32, h as u32, lab.iter().copied().collect())
        .expect("slice buffer matches its size");
    RawSample {
        image,
        mask: Some(mask),
        class: None,
    }
}
