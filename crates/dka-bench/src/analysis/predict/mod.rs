//! `dka predict`: a trained run on new images and volumes, as nnU-Net's `nnUNetv2_predict`
//! and timm's `inference.py` do it.
//!
//! - Inputs: folders (walked, sorted; sub-folders are kept in the output names), file lists
//!   (`.txt`, one path per line, relative to the list; `#` comments) and single files; PNG,
//!   JPEG, BMP and TIFF images, NIfTI volumes (`.nii`, `.nii.gz`).
//! - Preprocessing is the run's: the decode, resize (stretch, or longest side and pad) and
//!   normalisation its evaluation used, and for volumes its percentile clip and axial slicing.
//! - Classification: `predictions.csv`, `file,label,prob_<class>…` with the run's class
//!   names. Segmentation: `<stem>.png`, one channel, values 0..C−1 at the input's own size
//!   (class probabilities resized back bilinearly, padding cut off first), optionally
//!   `<stem>_overlay.png` and `<stem>_probabilities.safetensors` (`[C, H, W]`); a volume is
//!   predicted slice by slice in the plane the run was trained on and written back voxel for
//!   voxel as `<stem>.nii.gz` with the input's header (shape and affine), its probabilities as
//!   a 4-D `<stem>_probabilities.nii.gz`.
//! - A file that cannot be read is named in one line and the others are predicted; the run's
//!   summary (`predict.json`) lists the failures.
use crate::config::run::RunConfig;
use crate::train::data::{preprocess, Normalizer};
use crate::train::precision::Amp;
use crate::train::trained::TrainedRun;
use anyhow::{bail, Context};
use dka_data::nifti_volume::{axial_axis, axial_slice, normalize_percentile_u8, read_volume};
use dka_data::nifti_write::{write_like, Voxels};
use dka_data::volume_ops::put_axial_slice;
use dka_data::{Preprocess, RawSample, U8Sample};
use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3, Array4};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

mod inputs;

pub use inputs::{
    check_unique_outputs, collect_inputs, kind_of, Input, InputKind, IMAGE_EXTENSIONS,
};
/// What `dka predict` writes besides the masks and the CSV.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub out: PathBuf,
    pub batch_size: usize,
    /// Per-class probability maps (segmentation).
    pub probabilities: bool,
    /// A colour overlay of the mask on the image (segmentation images).
    pub overlay: bool,
}

/// What a prediction did.
#[derive(Debug, Default)]
pub struct Predicted {
    /// Inputs predicted.
    pub done: usize,
    /// Inputs that could not be read or written, and why.
    pub failed: Vec<(PathBuf, String)>,
    /// Images (volume slices counted) through the network.
    pub images: usize,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// A run ready to predict: its preprocessing and its model on a device.
pub struct Predictor<'a> {
    run: &'a TrainedRun,
    pre: Preprocess,
    normalizer: Normalizer,
    amp: Amp,
    size: (i64, i64),
    pad: bool,
    device: Device,
}

impl<'a> Predictor<'a> {
    pub fn new(run: &'a TrainedRun, device: Device) -> anyhow::Result<Self> {
        let spec = run.cfg.input_spec()?;
        Ok(Self {
            pre: preprocess(&run.cfg, &spec),
            normalizer: Normalizer::new(&spec, device),
            amp: Amp::new(run.cfg.precision, device),
            size: (run.cfg.img_size as i64, run.cfg.img_size as i64),
            pad: spec.resize == dka_core::input::ResizeMode::LongestSidePad,
            run,
            device,
        })
    }

    /// Class probabilities of prepared images: `[B, C]`, or `[B, C, S, S]` for a segmenter,
    /// f32 on the CPU.
    pub fn probabilities(&self, batch: &[U8Sample]) -> Tensor {
        let (n, h, w) = (batch.len() as i64, self.size.0, self.size.1);
        let mut bytes = Vec::with_capacity((n * h * w * 3) as usize);
        for s in batch {
            bytes.extend_from_slice(s.image.as_raw());
        }
        let x = Tensor::from_slice(&bytes)
            .view([n, h, w, 3])
            .permute([0, 3, 1, 2])
            .to_device(self.device)
            .to_kind(Kind::Float)
            / 255.0;
        let valid = self.pad.then(|| {
            let mut v = vec![0f32; (n * h * w) as usize];
            for (k, s) in batch.iter().enumerate() {
                let (eh, ew) = s.extent;
                for yy in 0..(eh as i64).min(h) {
                    let row = (k as i64 * h * w + yy * w) as usize;
                    v[row..row + (ew as i64).min(w) as usize].fill(1.0);
                }
            }
            Tensor::from_slice(&v)
                .view([n, 1, h, w])
                .to_device(self.device)
        });
        let x = self.normalizer.apply(&x, valid.as_ref());
        let model = &self.run.model;
        let logits = tch::no_grad(|| {
            self.amp
                .run(|| model.head_logits(&model.embed(&x, false), self.size, false))
        });
        logits
            .to_kind(Kind::Float)
            .softmax(1, Kind::Float)
            .to_device(Device::Cpu)
    }

    /// A segmenter's probabilities `[C, S, S]` for one image back at `(height, width)`: the
    /// padding cut off (`extent`), then resized bilinearly (half-pixel centres).
    fn at_size(&self, probs: &Tensor, extent: (u32, u32), size: (usize, usize)) -> Tensor {
        let (eh, ew) = (extent.0 as i64, extent.1 as i64);
        let content = probs.narrow(1, 0, eh).narrow(2, 0, ew).unsqueeze(0);
        let (h, w) = (size.0 as i64, size.1 as i64);
        if (eh, ew) == (h, w) {
            return content.squeeze_dim(0);
        }
        content
            .upsample_bilinear2d([h, w], false, None, None)
            .squeeze_dim(0)
    }
}

/// The run's evaluation preprocessing (`pre`) of a decoded image.
fn prepare(pre: &Preprocess, image: RgbImage) -> anyhow::Result<U8Sample> {
    Ok(dka_data::prepare_u8(
        RawSample {
            image,
            mask: None,
            class: None,
        },
        pre,
        None,
    )?)
}

/// The class map of `[C, H, W]` probabilities (`[H, W]`, u8; the first class wins a tie).
fn argmax_u8(probs: &Tensor) -> anyhow::Result<Array2<u8>> {
    let s = probs.size();
    let a = probs.argmax(0, false).to_kind(Kind::Uint8).contiguous();
    Ok(Array2::from_shape_vec(
        (s[1] as usize, s[2] as usize),
        Vec::<u8>::try_from(&a.view([-1]))?,
    )?)
}

/// Distinct colours for classes 1.. (class 0, the background, is left as it is).
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

/// The image with each foreground class tinted by its colour (45 % opacity).
fn overlay(image: &RgbImage, mask: &Array2<u8>) -> RgbImage {
    let mut out = image.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let c = mask[[y as usize, x as usize]];
        if c > 0 {
            let col = PALETTE[(c as usize - 1) % PALETTE.len()];
            for k in 0..3 {
                p.0[k] = (0.55 * p.0[k] as f32 + 0.45 * col[k] as f32).round() as u8;
            }
        }
    }
    out
}

fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    Ok(())
}

/// Predicts `inputs` with `run` into `o.out`.
pub fn predict(
    run: &TrainedRun,
    inputs: &[Input],
    o: &PredictOptions,
    device: Device,
) -> anyhow::Result<Predicted> {
    anyhow::ensure!(!inputs.is_empty(), "no images or volumes to predict");
    let seg = run.segmentation();
    if !seg {
        if let Some(v) = inputs.iter().find(|i| i.kind == InputKind::Volume) {
            bail!(
                "{}: a classification run predicts images, not volumes (a volume needs a \
                 segmentation run)",
                v.path.display()
            );
        }
    }
    if inputs.iter().any(|i| i.kind == InputKind::Volume) {
        let v = &run.cfg.data_options.volume;
        if run.cfg.dataset == "brats" && v.modalities.len() > 1 {
            bail!(
                "this run was trained on {} stacked BraTS modalities ({:?}); dka predict reads \
                 one-channel volumes",
                v.modalities.len(),
                v.modalities
            );
        }
    }
    if seg {
        check_unique_outputs(inputs)?;
    }
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    let p = Predictor::new(run, device)?;
    let t0 = std::time::Instant::now();
    let mut done = Predicted::default();
    let bar = crate::util::progress::bar(inputs.len() as u64, "predicting");
    let mut csv = if seg {
        None
    } else {
        let path = o.out.join("predictions.csv");
        let mut w = csv::Writer::from_path(&path).with_context(|| path.display().to_string())?;
        let mut header = vec!["file".to_string(), "label".to_string()];
        header.extend(run.classes().iter().map(|c| format!("prob_{c}")));
        w.write_record(&header)?;
        done.files.push(path);
        Some(w)
    };
    let images: Vec<&Input> = inputs
        .iter()
        .filter(|i| i.kind == InputKind::Image)
        .collect();
    let pre = p.pre;
    for chunk in images.chunks(o.batch_size.max(1)) {
        // Decode and resize in parallel; a file that fails leaves the batch.
        let prepared: Vec<(&Input, anyhow::Result<((u32, u32), U8Sample)>)> = chunk
            .par_iter()
            .map(|i| {
                let r = (|| {
                    let (w, h) = dka_data::image_io::dimensions(&i.path)?;
                    let img = dka_data::image_io::read_rgb_scaled(&i.path, &|w, h| {
                        pre.decode_scale(w, h)
                    })?;
                    Ok(((h, w), prepare(&pre, img)?))
                })();
                (*i, r)
            })
            .collect();
        let mut ok: Vec<(&Input, (u32, u32))> = Vec::new();
        let mut batch: Vec<U8Sample> = Vec::new();
        for (i, r) in prepared {
            match r {
                Ok((size, s)) => {
                    ok.push((i, size));
                    batch.push(s);
                }
                Err(e) => fail(&mut done, &i.path, e, &bar),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let probs = p.probabilities(&batch);
        done.images += batch.len();
        for (k, ((input, (h, w)), s)) in ok.iter().zip(&batch).enumerate() {
            let pk = probs.get(k as i64);
            let r = match &mut csv {
                Some(w) => write_class_row(w, input, &pk, run.classes()),
                None => write_mask(
                    &p,
                    input,
                    &pk,
                    s.extent,
                    (*h as usize, *w as usize),
                    o,
                    &mut done.files,
                ),
            };
            match r {
                Ok(()) => done.done += 1,
                Err(e) => fail(&mut done, &input.path, e, &bar),
            }
            bar.inc(1);
        }
        if let Some(w) = &mut csv {
            w.flush()?;
        }
    }
    for v in inputs.iter().filter(|i| i.kind == InputKind::Volume) {
        match predict_volume(&p, v, o, &mut done) {
            Ok(()) => done.done += 1,
            Err(e) => fail(&mut done, &v.path, e, &bar),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    done.seconds = t0.elapsed().as_secs_f64();
    Ok(done)
}

fn fail(done: &mut Predicted, path: &Path, e: anyhow::Error, bar: &indicatif::ProgressBar) {
    let msg = format!("{e:#}");
    bar.suspend(|| eprintln!("skipped {}: {msg}", path.display()));
    done.failed.push((path.to_path_buf(), msg));
    bar.inc(1);
}

fn write_class_row(
    w: &mut csv::Writer<std::fs::File>,
    input: &Input,
    probs: &Tensor,
    classes: &[String],
) -> anyhow::Result<()> {
    let p = Vec::<f32>::try_from(probs)?;
    let best = p
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i);
    let mut row = vec![input.path.display().to_string(), classes[best].clone()];
    row.extend(p.iter().map(|v| format!("{v:.6}")));
    w.write_record(&row)?;
    Ok(())
}

fn write_mask(
    p: &Predictor,
    input: &Input,
    probs: &Tensor,
    extent: (u32, u32),
    size: (usize, usize),
    o: &PredictOptions,
    files: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let full = p.at_size(probs, extent, size);
    let mask = argmax_u8(&full)?;
    let base = o.out.join(&input.stem);
    let path = base.with_extension("png");
    ensure_parent(&path)?;
    let (h, w) = size;
    GrayImage::from_raw(w as u32, h as u32, mask.iter().copied().collect())
        .expect("mask buffer matches its size")
        .save(&path)
        .with_context(|| path.display().to_string())?;
    files.push(path);
    if o.overlay {
        let image = dka_data::image_io::read_rgb(&input.path)?;
        let path = PathBuf::from(format!("{}_overlay.png", base.display()));
        overlay(&image, &mask)
            .save(&path)
            .with_context(|| path.display().to_string())?;
        files.push(path);
    }
    if o.probabilities {
        let path = PathBuf::from(format!("{}_probabilities.safetensors", base.display()));
        Tensor::write_safetensors(&[("probabilities", full.contiguous())], &path)
            .with_context(|| path.display().to_string())?;
        files.push(path);
    }
    Ok(())
}

/// A volume slice by slice along its axial axis (the plane volume runs train on), written
/// back into the input's voxel grid.
fn predict_volume(
    p: &Predictor,
    input: &Input,
    o: &PredictOptions,
    done: &mut Predicted,
) -> anyhow::Result<()> {
    let cfg: &RunConfig = &p.run.cfg;
    let vol = read_volume(&input.path)?;
    let affine = vol.header.affine;
    let axis = axial_axis(&affine);
    let (lo, hi) = cfg.data_options.volume.percentiles;
    let u8v = normalize_percentile_u8(&vol.data, lo, hi);
    drop(vol.data);
    let dims = u8v.raw_dim();
    let classes = p.run.classes().len();
    let mut labels = Array3::<u8>::zeros(dims);
    let mut maps = o
        .probabilities
        .then(|| Array4::<f32>::zeros((dims[0], dims[1], dims[2], classes)));
    let depth = dims[axis];
    let pre = p.pre;
    let zs: Vec<usize> = (0..depth).collect();
    for chunk in zs.chunks(o.batch_size.max(1)) {
        let slices: Vec<Array2<u8>> = chunk
            .iter()
            .map(|&z| axial_slice(u8v.view(), &affine, axis, z))
            .collect();
        let batch: Vec<U8Sample> = slices
            .par_iter()
            .map(|s| {
                let (h, w) = s.dim();
                let rgb: Vec<u8> = s.iter().flat_map(|&v| [v, v, v]).collect();
                prepare(
                    &pre,
                    RgbImage::from_raw(w as u32, h as u32, rgb).expect("slice buffer"),
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let probs = p.probabilities(&batch);
        done.images += batch.len();
        for (k, (&z, s)) in chunk.iter().zip(&batch).enumerate() {
            let full = p.at_size(&probs.get(k as i64), s.extent, slices[k].dim());
            put_axial_slice(labels.view_mut(), &affine, axis, z, &argmax_u8(&full)?);
            if let Some(maps) = &mut maps {
                for c in 0..classes {
                    let pc = full.get(c as i64).contiguous();
                    let plane = Array2::from_shape_vec(
                        slices[k].dim(),
                        Vec::<f32>::try_from(&pc.view([-1]))?,
                    )?;
                    let view = maps.index_axis_mut(ndarray::Axis(3), c);
                    put_axial_slice(view, &affine, axis, z, &plane);
                }
            }
        }
    }
    let base = o.out.join(&input.stem);
    let path = PathBuf::from(format!("{}.nii.gz", base.display()));
    ensure_parent(&path)?;
    write_like(&input.path, &path, Voxels::Labels(&labels))?;
    done.files.push(path);
    if let Some(maps) = &maps {
        let path = PathBuf::from(format!("{}_probabilities.nii.gz", base.display()));
        write_like(&input.path, &path, Voxels::Maps(maps))?;
        done.files.push(path);
    }
    Ok(())
}
