//! `dka data inspect`: open a release as distributed, draw a split, print class counts per
//! split and write the split's manifest (files with content hashes) so it can be re-created.
use anyhow::Context;
use dka_data::{inspect, manifest_file_name, parse_fraction, LoaderOptions, SplitSpec, DATASETS};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Class counts per split, and the split's manifest.
    Inspect(InspectArgs),
    /// Write a small learnable synthetic image-folder dataset (for quick profiles and tests).
    Synth(SynthArgs),
}

/// A small learnable image-folder dataset (`OUT/class<c>/<n>.png`).
#[derive(clap::Args)]
pub struct SynthArgs {
    /// The folder to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub classes: u32,
    #[arg(long, default_value_t = 40)]
    pub per_class: u32,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `blobs`: a disc per class in its own region (the quick profiles); `long-range`: the
    /// class is the colour `--distance` patches right of a white marker, every colour equally
    /// frequent (3 classes; `--size` is ignored: grid × patch pixels).
    #[arg(long, default_value = "blobs", value_parser = ["blobs", "long-range"])]
    pub task: String,
    /// long-range: patches per side (the ViT's token grid).
    #[arg(long, default_value_t = 16)]
    pub grid: u32,
    /// long-range: pixels per patch (the ViT's patch size).
    #[arg(long, default_value_t = 8)]
    pub patch: u32,
    /// long-range: marker-to-target offset, in patches.
    #[arg(long, default_value_t = 10)]
    pub distance: u32,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Dataset: isic2019, isic2018, busi-cls, busi-seg, brats, covid, folder, csv, mni152, colin27.
    #[arg(long)]
    dataset: String,
    /// The folder as the release distributes it.
    #[arg(long)]
    root: PathBuf,
    /// Training fraction per class, e.g. 0.63%, 1.25%, 100% or 0.0125.
    #[arg(long, default_value = "100%")]
    fraction: String,
    /// Which seeded draw of the training subset (0-based).
    #[arg(long, default_value_t = 0)]
    draw: u32,
    /// Split seed (fixes the test split).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out test fraction per class (ignored where the release has a labelled test split).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Validation fraction carved from the training pool.
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// Skip unreadable or inconsistent files (they are counted and reported) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Where to write the manifest (default: results/manifests/<dataset>-r<r>-d<k>-s<seed>.json).
    #[arg(long)]
    manifest: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let a = match cmd {
        Command::Inspect(a) => a,
        Command::Synth(a) if a.task == "long-range" => {
            let spec = dka_data::synth::LongRangeSpec {
                grid: a.grid,
                patch: a.patch,
                distance: a.distance,
                per_class: a.per_class,
                per_colour: 2,
                seed: a.seed,
            };
            dka_data::synth::write_long_range(&a.out, &spec)?;
            tracing::info!(
                "wrote {} long-range images (3 classes, {}x{} patches of {} px, distance {}) to {}",
                3 * a.per_class,
                a.grid,
                a.grid,
                a.patch,
                a.distance,
                a.out.display()
            );
            return Ok(());
        }
        Command::Synth(a) => {
            let spec = dka_data::synth::SynthSpec {
                classes: a.classes,
                per_class: a.per_class,
                size: a.size,
                seed: a.seed,
            };
            dka_data::synth::write_folder_dataset(&a.out, &spec)?;
            tracing::info!(
                "wrote {} images in {} classes to {}",
                a.classes * a.per_class,
                a.classes,
                a.out.display()
            );
            return Ok(());
        }
    };
    if !DATASETS.contains(&a.dataset.as_str()) {
        anyhow::bail!(
            "unknown dataset '{}' (known: {})",
            a.dataset,
            DATASETS.join(", ")
        );
    }
    let spec = SplitSpec {
        test_fraction: a.test_fraction,
        val_fraction: a.val_fraction,
        train_fraction: parse_fraction(&a.fraction)?,
        draw: a.draw,
        seed: a.seed,
    };
    let opts = LoaderOptions {
        skip_bad: a.skip_bad,
        ..Default::default()
    };
    let manifest = a.manifest.unwrap_or_else(|| {
        PathBuf::from("results/manifests").join(manifest_file_name(&a.dataset, &spec))
    });
    if let Some(dir) = manifest.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let report = inspect(&a.dataset, &a.root, &opts, &spec, Some(&manifest))?;
    print!("{report}");
    if a.skip_bad {
        tracing::warn!("--skip-bad: {} file(s) skipped", report.skipped_count());
    }
    Ok(())
}
