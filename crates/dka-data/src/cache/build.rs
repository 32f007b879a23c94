//! Building a decoded cache: samples decoded in parallel straight into memory-mapped
//! temporary files, published by renames (`meta.json` last).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::MmapMut;
use rayon::prelude::*;

use super::{CacheKey, Meta, IMAGES, MASKS, META};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::normalize::write_chw;
use crate::preprocess::prepare_u8;
use crate::preset::{Preprocess, U8Sample};

/// A writable temporary file, mapped (or empty), renamed into place by [`Temp::publish`] and
/// removed if dropped unpublished.
struct Temp {
    path: PathBuf,
    map: Option<MmapMut>,
}

impl Temp {
    fn create(dir: &Path, name: &str, len: u64) -> Result<Temp> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(
            ".{name}.tmp-{}-{nonce}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| DataError::io(&path, e))?;
        let mut t = Temp { path, map: None };
        f.set_len(len).map_err(|e| DataError::io(&t.path, e))?;
        if len > 0 {
            // SAFETY: a fresh file of this process's own; nothing else maps or writes it.
            let map = unsafe { MmapMut::map_mut(&f) }.map_err(|e| DataError::io(&t.path, e))?;
            t.map = Some(map);
        }
        Ok(t)
    }

    fn bytes(&mut self) -> &mut [u8] {
        match &mut self.map {
            Some(m) => m,
            None => &mut [],
        }
    }

    fn publish(mut self, to: &Path) -> Result<()> {
        if let Some(m) = self.map.take() {
            m.flush().map_err(|e| DataError::io(&self.path, e))?;
        }
        std::fs::rename(&self.path, to).map_err(|e| DataError::io(to, e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.map = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where one position's output goes.
struct Slot<'a> {
    pos: usize,
    image: &'a mut [u8],
    mask: Option<&'a mut [u8]>,
}

/// What a position's sample contributes besides its pixels: (position, class, extent).
type Info = (usize, Option<usize>, (u32, u32));

fn write(
    s: U8Sample,
    slot: &mut Slot,
    plane: usize,
    ds: &dyn Dataset,
    record: usize,
) -> Result<Info> {
    write_chw(s.image.as_raw(), slot.image, plane);
    if let Some(dst) = slot.mask.as_deref_mut() {
        let m = s.mask.ok_or_else(|| {
            DataError::cache(
                ds.root(),
                format!(
                    "segmentation sample `{}` has no mask",
                    ds.records()[record].id
                ),
            )
        })?;
        dst.copy_from_slice(m.as_raw());
    }
    Ok((slot.pos, s.class, s.extent))
}

/// What every unit of a build shares.
struct Job<'a> {
    ds: &'a dyn Dataset,
    indices: &'a [usize],
    pre: &'a Preprocess,
    /// H * W.
    plane: usize,
    done: AtomicUsize,
    progress: &'a (dyn Fn(usize, usize) + Sync),
}

/// Decodes one unit (records sharing their files: one image, or one volume's slices).
fn unit(job: &Job, mut slots: Vec<Slot>) -> Result<Vec<Info>> {
    let Job {
        ds,
        indices,
        pre,
        plane,
        ..
    } = *job;
    let total = indices.len();
    let tick = || (job.progress)(job.done.fetch_add(1, Ordering::Relaxed) + 1, total);
    if slots.len() == 1 {
        let rec = indices[slots[0].pos];
        let s = ds.sample_u8(rec, pre, None)?;
        let info = write(s, &mut slots[0], plane, ds, rec)?;
        tick();
        return Ok(vec![info]);
    }
    let recs: Vec<usize> = slots.iter().map(|s| indices[s.pos]).collect();
    let raws = ds.read_many(&recs);
    slots
        .par_iter_mut()
        .zip(raws)
        .zip(recs)
        .map(|((slot, raw), rec)| {
            let info = write(prepare_u8(raw?, pre, None)?, slot, plane, ds, rec)?;
            tick();
            Ok(info)
        })
        .collect()
}

/// Removes temporary files that a build killed more than a day ago left behind.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if name.starts_with('.') && name.contains(".tmp-") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Builds the cache of `key` in `dir`; returns the number of samples decoded.
pub(super) fn build(
    ds: &dyn Dataset,
    indices: &[usize],
    pre: &Preprocess,
    key: &CacheKey,
    dir: &Path,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<usize> {
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    remove_stale_temps(dir);
    let n = indices.len();
    let (h, w) = pre.size;
    let plane = (h * w) as usize;
    let segmentation = ds.task().is_segmentation();
    let mut images = Temp::create(dir, IMAGES, (n * 3 * plane) as u64)?;
    let mut masks = if segmentation {
        Some(Temp::create(dir, MASKS, (n * plane) as u64)?)
    } else {
        None
    };
    // Units of work: positions whose records share their files decode together (a volume's
    // slices: one decode per case, even when each slice is its own split group, as for
    // MNI152), sorted by group; units run in parallel.
    let mut units: BTreeMap<&[PathBuf], (&str, Vec<usize>)> = BTreeMap::new();
    for (pos, &i) in indices.iter().enumerate() {
        let r = &ds.records()[i];
        units
            .entry(r.files.as_slice())
            .or_insert_with(|| (r.group.as_str(), Vec::new()))
            .1
            .push(pos);
    }
    let mut units: Vec<(&str, Vec<usize>)> = units.into_values().collect();
    units.sort_by(|a, b| a.0.cmp(b.0));
    let mut image_slots: Vec<Option<&mut [u8]>> =
        images.bytes().chunks_mut(3 * plane).map(Some).collect();
    let mut mask_slots: Vec<Option<&mut [u8]>> = match &mut masks {
        Some(m) => m.bytes().chunks_mut(plane).map(Some).collect(),
        None => Vec::new(),
    };
    let work: Vec<Vec<Slot>> = units
        .into_iter()
        .map(|(_, positions)| {
            positions
                .into_iter()
                .map(|pos| Slot {
                    pos,
                    image: image_slots[pos].take().expect("each position once"),
                    mask: mask_slots.get_mut(pos).and_then(Option::take),
                })
                .collect()
        })
        .collect();
    let job = Job {
        ds,
        indices,
        pre,
        plane,
        done: AtomicUsize::new(0),
        progress,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("dka-cache-{i}"))
        .build()
        .map_err(|e| DataError::config(format!("cannot start {threads} decoding threads ({e})")))?;
    let infos: Vec<Vec<Info>> = pool.install(|| {
        work.into_par_iter()
            .map(|slots| unit(&job, slots))
            .collect::<Result<_>>()
    })?;
    drop(image_slots);
    drop(mask_slots);
    let mut classes = vec![0i64; n];
    let mut extents = vec![(h, w); n];
    for (pos, class, extent) in infos.into_iter().flatten() {
        classes[pos] = class.unwrap_or(0) as i64;
        extents[pos] = extent;
    }
    let meta = Meta {
        key: key.hex().to_string(),
        material: key.material.clone(),
        len: n,
        size: pre.size,
        segmentation,
        classes: (!segmentation).then_some(classes),
        extents,
        images_bytes: (n * 3 * plane) as u64,
        masks_bytes: if segmentation { (n * plane) as u64 } else { 0 },
        build_seconds: t0.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec(&meta)
        .map_err(|e| DataError::cache(dir, format!("cannot serialise meta.json ({e})")))?;
    images.publish(&dir.join(IMAGES))?;
    if let Some(m) = masks {
        m.publish(&dir.join(MASKS))?;
    }
    let mut meta_file = Temp::create(dir, META, json.len() as u64)?;
    meta_file.bytes().copy_from_slice(&json);
    meta_file.publish(&dir.join(META))?;
    Ok(n)
}
