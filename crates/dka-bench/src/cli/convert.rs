//! `dka convert`: rename a safetensors checkpoint's keys to timm's (see dka_core::convert).
//! PyTorch pickles (.pth/.bin) are first turned into safetensors by
//! `python/pth_to_safetensors.py` (`just convert` runs both).
use crate::util::fs::write_safetensors;
use dka_core::weights::Checkpoint;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Input .safetensors (torchvision ViT, SAM / MedSAM, timm, possibly `module.`-prefixed).
    #[arg(long)]
    input: PathBuf,
    /// Output .safetensors with timm names.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let ckpt = Checkpoint::read(&a.input)?;
    let n = ckpt.tensors.len();
    let tensors: Vec<(&str, tch::Tensor)> = ckpt
        .tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.shallow_clone()))
        .collect();
    write_safetensors(&a.output, &tensors)?;
    tracing::info!(
        "{} ({} names) -> {}: {n} tensors with timm names",
        a.input.display(),
        ckpt.format,
        a.output.display()
    );
    Ok(())
}
