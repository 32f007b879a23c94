//! `dka features`: a backbone's `forward_features` (and head) on a batch from a file.
//! A user feature (feature extraction) and how anyone checks parity from the command line.
use crate::config::run::Precision;
use crate::train::precision::Amp;
use crate::util::device::{pick, DeviceArg};
use crate::util::fs::write_safetensors;
use anyhow::{anyhow, Context};
use dka_core::weights::{load_checkpoint, read_safetensors, Checkpoint};
use dka_core::{Backbone, BackboneConfig};
use std::path::PathBuf;
use tch::{nn, Kind, Tensor};

/// What `dka features` runs and on what.
#[derive(Debug, Clone)]
pub struct FeaturesOptions {
    /// Backbone preset or JSON config.
    pub backbone: String,
    /// Weights as .safetensors with timm names.
    pub weights: PathBuf,
    /// A .safetensors file holding tensor `input` [batch, 3, H, W] (float32).
    pub input: PathBuf,
    /// Where to write `features` (and `logits` when the weights or the adapter hold a head).
    pub output: PathBuf,
    /// A trained adapter folder (dka's, or a peft LoRA folder).
    pub adapter: Option<PathBuf>,
    pub device: DeviceArg,
    /// The forward's precision: `bf16`/`fp16` autocast on the device (fp16 needs CUDA), `fp32`,
    /// or `auto` (as a run would choose). The outputs are written as float32 either way.
    pub precision: Precision,
}

/// Names under which a trained task head is saved next to an adapter.
pub const TASK_HEAD: [&str; 2] = ["task_head.weight", "task_head.bias"];

/// Runs the backbone (with the adapter, if any) on the input and writes its features (and
/// logits); returns the written tensors' names and shapes.
pub fn extract(a: &FeaturesOptions) -> anyhow::Result<Vec<(String, Vec<i64>)>> {
    let device = pick(a.device)?;
    let precision = match a.precision {
        Precision::Auto => crate::config::run::auto_precision(device).0,
        Precision::Fp16 if !device.is_cuda() => {
            anyhow::bail!("--precision fp16 needs CUDA; on the CPU use bf16 or fp32")
        }
        p => p,
    };
    let amp = Amp::new(precision, device);
    let mut cfg = BackboneConfig::from_spec(&a.backbone)?;
    let ckpt = Checkpoint::read(&a.weights)?;
    // The head is part of the output only when the checkpoint brings one.
    cfg.set_num_classes(ckpt.head_classes(cfg.head_prefix()).unwrap_or(0));

    let mut vs = nn::VarStore::new(device);
    let mut model = Backbone::new(&vs.root(), &cfg)?;
    let report = load_checkpoint(&mut vs, &ckpt, cfg.head_prefix())?;
    tracing::info!("{}: {}", a.weights.display(), report.summary());
    drop(ckpt);
    let mut task_head = None;
    let mut avs = nn::VarStore::new(device);
    if let Some(dir) = &a.adapter {
        let saved = dka_baselines::io::open(dir)?;
        saved
            .method
            .method()
            .attach(&mut model, &avs.root())
            .with_context(|| dir.display().to_string())?;
        dka_baselines::io::apply(&saved, dir, &mut avs, &mut vs, &TASK_HEAD)?;
        if let (Some(w), Some(b)) = (
            saved.tensors.get(TASK_HEAD[0]),
            saved.tensors.get(TASK_HEAD[1]),
        ) {
            task_head = Some((w.to_device(device), b.to_device(device)));
        }
        tracing::info!(
            "{}: {} adapter, {} tensors",
            dir.display(),
            saved.method.method().name(),
            saved.tensors.len()
        );
    }

    let input = read_safetensors(&a.input)?
        .into_iter()
        .find_map(|(n, t)| (n == "input").then_some(t))
        .ok_or_else(|| anyhow!("{}: no tensor named 'input'", a.input.display()))?;
    model
        .check_input(&input.size())
        .with_context(|| a.input.display().to_string())?;
    let input = input.to_kind(Kind::Float).to_device(device);

    let (features, logits) = tch::no_grad(|| {
        amp.run(|| {
            let f = model.forward_features(&input, false);
            let logits = match &task_head {
                Some((w, b)) => Some(model.pool(&f).linear(w, Some(b))),
                None => model.forward_head(&f),
            };
            (f.x, logits)
        })
    });
    let host = |t: Tensor| t.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let mut out = vec![("features", host(features))];
    if let Some(l) = logits {
        out.push(("logits", host(l)));
    }
    write_safetensors(&a.output, &out)?;
    Ok(out.iter().map(|(n, t)| (n.to_string(), t.size())).collect())
}
