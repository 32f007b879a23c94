//! `dka predict RUN --input PATH… --out DIR`.
use crate::analysis::predict::{collect_inputs, predict, PredictOptions};
use crate::train::trained::TrainedRun;
use crate::util::device::{device_name, pick, DeviceArg};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  dka predict results/isic-dka --input ~/new-images --out preds        # masks preds/<name>.png
  dka predict results/isic-dka --input list.txt a.jpg --out preds --overlay --probabilities
  dka predict results/mni-dka --input scan.nii.gz --out preds          # preds/scan.nii.gz

Classification writes DIR/predictions.csv (file,label,prob_<class>...). Segmentation writes one
mask per input at the input's size, DIR/<name>.png with values 0..C-1 (sub-folders of an input
folder are kept); a NIfTI volume is predicted slice by slice in the axial plane and written as
DIR/<name>.nii.gz with the input's shape and affine. DIR/predict.json says what was done.")]
pub struct Args {
    /// A trained run's folder (`dka train --out`, or a grid's `runs/<id>`).
    pub run: PathBuf,
    /// Images (PNG, JPEG, BMP, TIFF), NIfTI volumes (.nii, .nii.gz), folders of them (walked)
    /// or .txt lists of them (one path per line, relative to the list).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// The folder to write into.
    #[arg(long)]
    pub out: PathBuf,
    /// Images (or volume slices) per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Also write per-class probabilities: <name>_probabilities.safetensors ([C, H, W]) for
    /// images, a 4-D <name>_probabilities.nii.gz for volumes (segmentation).
    #[arg(long)]
    pub probabilities: bool,
    /// Also write <name>_overlay.png, the mask's classes tinted over the image (segmentation).
    #[arg(long)]
    pub overlay: bool,
    /// The run's backbone weights file, if it has moved since the run.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let inputs = collect_inputs(&a.input)?;
    let device = pick(a.device)?;
    let run = TrainedRun::open(&a.run, device, a.weights.as_deref())?;
    let o = PredictOptions {
        out: a.out.clone(),
        batch_size: a.batch_size,
        probabilities: a.probabilities,
        overlay: a.overlay,
    };
    let done = predict(&run, &inputs, &o, device)?;
    let summary = serde_json::json!({
        "run": a.run.display().to_string(),
        "method": run.cfg.method,
        "backbone": run.cfg.backbone,
        "weights": run.cfg.weights,
        "classes": run.classes(),
        "task": if run.segmentation() { "segmentation" } else { "classification" },
        "img_size": run.cfg.img_size,
        "preprocessing": run.cfg.input_spec()?,
        "volume_percentiles": run.cfg.data_options.volume.percentiles,
        "device": device_name(device),
        "inputs": inputs.len(),
        "predicted": done.done,
        "images_through_the_network": done.images,
        "seconds": done.seconds,
        "failed": done.failed.iter().map(|(p, e)| serde_json::json!({"file": p, "error": e})).collect::<Vec<_>>(),
    });
    let path = a.out.join("predict.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| path.display().to_string())?;
    eprintln!(
        "predicted {} of {} inputs into {} ({} images in {:.1} s, {:.1} images/s on {})",
        done.done,
        inputs.len(),
        a.out.display(),
        done.images,
        done.seconds,
        done.images as f64 / done.seconds.max(1e-9),
        device_name(device)
    );
    anyhow::ensure!(
        done.failed.is_empty(),
        "{} of {} inputs failed (named above; listed in {}); the others are predicted",
        done.failed.len(),
        inputs.len(),
        path.display()
    );
    Ok(())
}
