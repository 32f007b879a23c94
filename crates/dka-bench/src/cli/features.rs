//! `dka features`: a backbone's `forward_features` (and head) on a batch from a file; a
//! user feature (feature extraction) and how anyone checks parity from the command line.
use crate::analysis::features::{extract, FeaturesOptions};
use crate::config::run::Precision;
use crate::util::device::DeviceArg;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Backbone preset (vit_base_patch16_224, resnet50, samvit_base_patch16, medsam_vit_b, ...)
    /// or a JSON file of timm constructor fields with "arch": "vit" | "resnet" | "samvit".
    #[arg(long)]
    pub backbone: String,
    /// Weights as .safetensors with timm names (torchvision-ViT and SAM names are renamed).
    /// Convert .pth/.bin files with `just convert`.
    #[arg(long)]
    pub weights: PathBuf,
    /// A .safetensors file holding tensor `input` [batch, 3, H, W] (float32).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write `features` (and `logits` when the weights hold a head).
    #[arg(long)]
    pub output: PathBuf,
    /// A trained adapter: a folder saved by dka (method.json + adapter.safetensors) or a peft
    /// LoRA folder (adapter_config.json + adapter_model.safetensors). A saved task head
    /// (`task_head.*`) then gives the logits.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// The forward's precision: fp32, bf16 (autocast, on the CPU too), fp16 (autocast, CUDA
    /// only) or auto (bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU).
    /// Outputs are written as float32.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub precision: Precision,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let o = FeaturesOptions {
        backbone: a.backbone,
        weights: a.weights,
        input: a.input,
        output: a.output,
        adapter: a.adapter,
        device: a.device,
        precision: a.precision,
    };
    let shapes: Vec<String> = extract(&o)?
        .iter()
        .map(|(n, s)| format!("{n} {s:?}"))
        .collect();
    tracing::info!("wrote {} ({})", o.output.display(), shapes.join(", "));
    Ok(())
}

/// `fp32`, `bf16`, `fp16` or `auto`.
pub fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("'{s}' is not a precision: use fp32, bf16, fp16 or auto"))
}
