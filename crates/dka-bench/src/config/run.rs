//! The resolved configuration of one training run. Experiments (TOML in `experiments/`) are
//! grids over these fields; each run folder holds its `config.json`.
use dka_baselines::MethodConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Linear warm-up for `warmup_epochs`, then cosine decay to 0.
    Cosine,
}

/// Optimiser with the paper's asynchronous learning rates: head, adapter and trained backbone
/// tensors in their own parameter groups (DKA: head 1e-4, adapter 1e-3; Figure 7 sweeps both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub adapter_lr: f64,
    pub head_lr: f64,
    /// Learning rate of the backbone tensors a method trains (full fine-tuning: all, BitFit:
    /// the biases). Unset: the method's own default (`Method::backbone_lr`: full 1e-5, BitFit
    /// 1e-3); a run's `config.json` always records the value used.
    pub backbone_lr: Option<f64>,
    /// Weight decay (AdamW: decoupled; Adam/SGD: L2). Never applied to biases, norms, prompts,
    /// position/class embeddings, learnable radii or 1-D tensors unless `decay_all`, nor to the
    /// task head unless `decay_head`.
    pub weight_decay: f64,
    pub decay_head: bool,
    pub decay_all: bool,
    pub momentum: f64,
    /// Clip the global gradient norm (the authors' script: 1.0).
    pub clip_grad_norm: Option<f64>,
    pub schedule: Schedule,
    pub warmup_epochs: usize,
}

impl Default for OptimConfig {
    /// The DKA authors' training script: Adam, head 1e-4, adapter 1e-3, no weight decay, no
    /// schedule, clipping 1.0.
    fn default() -> Self {
        Self {
            kind: OptimKind::Adam,
            adapter_lr: 1e-3,
            head_lr: 1e-4,
            backbone_lr: None,
            weight_decay: 0.0,
            decay_head: false,
            decay_all: false,
            momentum: 0.9,
            clip_grad_norm: Some(1.0),
            schedule: Schedule::Constant,
            warmup_epochs: 0,
        }
    }
}

/// Which epoch's test metrics a run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The last epoch (honest default).
    Last,
    /// The epoch with the best validation score (a validation split is carved from the
    /// training pool: set `val_fraction`).
    BestVal,
    /// The best test score over epochs: the DKA authors' protocol, for comparison with the
    /// paper only (it selects on the test set).
    BestTest,
}

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 autocast on a GPU with native bf16 (Ampere or later), fp16 with loss scaling on
    /// an older GPU, fp32 on the CPU (resolved before the run starts, said in its log;
    /// `config.json` records the result).
    Auto,
    Fp32,
    /// bf16 autocast; weights, gradients and optimiser state stay fp32. On CUDA, and on the CPU
    /// when asked for (1.6x faster steps for the demo's small models on an AVX512-BF16 CPU;
    /// libtorch's CPU autocast: matmuls, convolutions and attention in bf16).
    Bf16,
    /// fp16 autocast (CUDA) with dynamic loss scaling: a step whose gradients are not finite
    /// is skipped and the scale halved (`metrics.csv` counts skipped steps).
    Fp16,
}

/// Overrides of the backbone's recorded input convention ([`dka_core::input::InputSpec`]);
/// unset fields keep the checkpoint's values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputOverride {
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub scale: Option<dka_core::input::PixelScale>,
    pub resize: Option<dka_core::input::ResizeMode>,
    pub interpolation: Option<dka_core::input::Interp>,
    /// Where the values come from (filled in when a run resolves its config).
    pub source: Option<String>,
}

/// The segmentation head (`train::decoder` builds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// Segmenter's linear decoder: a per-patch Linear to class scores, upsampled.
    #[default]
    Linear,
    /// Segmenter's mask transformer.
    MaskTransformer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegLoss {
    Ce,
    CeDice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Backbone preset or JSON config.
    pub backbone: String,
    /// Pretrained weights (.safetensors); none = random init (tests and speed checks only).
    pub weights: Option<std::path::PathBuf>,
    pub method: MethodConfig,
    /// Dataset name (see `dka data inspect --help`); its folder comes from the command line.
    pub dataset: String,
    /// Training fraction per class: "0.63%", "1.25%", "100%", or a number.
    pub fraction: String,
    /// How the dataset is read: `skip_bad`, BraTS modalities / label mapping / empty slices,
    /// generic-CSV columns (dka-data's `LoaderOptions`).
    pub data_options: dka_data::LoaderOptions,
    /// Which seeded draw of the training subset.
    pub draw: u32,
    /// Fixes the test split (the same for every draw).
    pub split_seed: u64,
    pub test_fraction: f64,
    pub val_fraction: f64,
    /// Input size (square).
    pub img_size: u32,
    /// Input normalisation and resizing; unset fields follow the backbone's checkpoint.
    pub input: InputOverride,
    pub precision: Precision,
    pub epochs: usize,
    pub batch_size: usize,
    /// Batch size of evaluation and of the forward passes a run caches (linear probing's
    /// features, a frozen stem); 0: `batch_size`. Not part of a run's identity: without
    /// gradients, dropout or batch statistics the batch only changes float round-off, and a
    /// larger one costs fewer per-operation overheads (the demo's batches of 2).
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_batch_size: usize,
    pub optimizer: OptimConfig,
    pub selection: Selection,
    /// With `last` or `best-val` selection, also evaluate the test set every k epochs for the
    /// curve in `metrics.csv` (0: only the selected epoch is tested).
    pub test_every: usize,
    pub seg_loss: SegLoss,
    /// Segmentation head: `linear` (Segmenter's linear decoder) or `mask-transformer`.
    pub decoder: DecoderKind,
    /// Width of the mask transformer (default: the backbone's feature width).
    pub decoder_dim: Option<i64>,
    /// Random resized crop + flip on training images (never on evaluation images).
    pub augment: bool,
    /// Seeds initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Data-loading threads (libtorch keeps its own); 0 = the available cores minus one.
    pub loader_threads: usize,
    /// Activation checkpointing of the backbone's blocks (ViT and SAM ViT; others ignore it):
    /// the forward keeps only each block's input and the backward recomputes the block, one
    /// more forward of the blocks for about half the memory at large inputs (MedSAM's 1024
    /// input; `results/bench/steps.csv`, the `dka+ckpt` rows). Same gradients up to the order
    /// of float sums; dropout masks are drawn in another order than without it.
    pub checkpoint_blocks: bool,
    /// Warm start: the trained tensors (adapter and head) of another run of the same backbone
    /// and method (`RUN` or `RUN/adapter`) to start from instead of the method's
    /// initialisation. With `epochs = 0` the run only evaluates them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            backbone: "vit_base_patch16_224".into(),
            weights: None,
            method: MethodConfig::by_name("dka").expect("known"),
            dataset: "busi-cls".into(),
            fraction: "100%".into(),
            data_options: Default::default(),
            draw: 0,
            split_seed: 0,
            test_fraction: 0.2,
            val_fraction: 0.0,
            img_size: 224,
            input: InputOverride::default(),
            precision: Precision::Auto,
            epochs: 100,
            batch_size: 64,
            eval_batch_size: 0,
            optimizer: OptimConfig::default(),
            selection: Selection::Last,
            test_every: 0,
            seg_loss: SegLoss::Ce,
            decoder: Default::default(),
            decoder_dim: None,
            augment: true,
            seed: 0,
            loader_threads: 0,
            checkpoint_blocks: false,
            init_from: None,
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl RunConfig {
    /// The batch size of evaluation and of cached forward passes (see `eval_batch_size`).
    pub fn eval_batch(&self) -> usize {
        if self.eval_batch_size > 0 {
            self.eval_batch_size
        } else {
            self.batch_size
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        // Every number must be finite (JSON, hence config.json, cannot hold NaN or infinity).
        let value = toml::Value::try_from(self)?;
        if let Some(path) = non_finite(&value, "") {
            anyhow::bail!("{path} is not a finite number");
        }
        for (name, v) in [
            ("test_fraction", self.test_fraction),
            ("val_fraction", self.val_fraction),
        ] {
            anyhow::ensure!((0.0..1.0).contains(&v), "{name} = {v} must be in [0, 1)");
        }
        anyhow::ensure!(
            self.test_fraction + self.val_fraction < 1.0,
            "test_fraction + val_fraction = {} leaves no training data",
            self.test_fraction + self.val_fraction
        );
        let o = &self.optimizer;
        for (name, v) in [
            ("optimizer.head_lr", Some(o.head_lr)),
            ("optimizer.adapter_lr", Some(o.adapter_lr)),
            ("optimizer.backbone_lr", o.backbone_lr),
            ("optimizer.weight_decay", Some(o.weight_decay)),
        ] {
            if let Some(v) = v {
                anyhow::ensure!(v >= 0.0, "{name} = {v} must not be negative");
            }
        }
        anyhow::ensure!(
            (self.epochs > 0 || self.init_from.is_some()) && self.batch_size > 0,
            "epochs and batch_size must be positive (epochs = 0 only evaluates an init_from run)"
        );
        anyhow::ensure!(
            self.img_size >= 32,
            "img_size {} is too small",
            self.img_size
        );
        anyhow::ensure!(
            self.selection != Selection::BestVal || self.val_fraction > 0.0,
            "selection = \"best-val\" needs val_fraction > 0 (a validation split carved from the training pool)"
        );
        dka_data::parse_fraction(&self.fraction)?;
        Ok(())
    }

    /// The config with every default that depends on the method, the backbone or the device
    /// made explicit, as the run's `config.json` records it: the backbone group's learning
    /// rate (when the method trains backbone tensors), the input convention, the precision
    /// and the loader threads.
    pub fn resolve(&self, device: tch::Device) -> anyhow::Result<RunConfig> {
        let mut c = self.clone();
        let method = c.method.method();
        if c.optimizer.backbone_lr.is_none() {
            c.optimizer.backbone_lr = method.backbone_lr();
        }
        // Prompt padding is built for the run's input size.
        if let MethodConfig::Vpt(v) = &mut c.method {
            if v.image_size.is_none() {
                v.image_size = Some(c.img_size as i64);
            }
        }
        let spec = self.input_spec()?;
        c.input = InputOverride {
            mean: Some(spec.mean),
            std: Some(spec.std),
            scale: Some(spec.scale),
            resize: Some(spec.resize),
            interpolation: Some(spec.interpolation),
            source: Some(spec.source),
        };
        c.precision = match (c.precision, device.is_cuda()) {
            (Precision::Auto, _) => auto_precision(device).0,
            (Precision::Fp16, false) => {
                anyhow::bail!(
                    "precision fp16 needs CUDA; this run is on the CPU (use bf16, fp32 or auto)"
                )
            }
            (p, _) => p,
        };
        if c.loader_threads == 0 {
            c.loader_threads = default_loader_threads();
        }
        Ok(c)
    }

    /// The backbone checkpoint's input convention with this config's overrides applied.
    pub fn input_spec(&self) -> anyhow::Result<dka_core::input::InputSpec> {
        use dka_core::input::InputSpec;
        let base = InputSpec::for_backbone(&self.backbone)?;
        let known = base.is_some();
        let mut s = base.unwrap_or_else(|| InputSpec::imagenet_default(self.img_size));
        let o = &self.input;
        let overridden = o.mean.is_some()
            || o.std.is_some()
            || o.scale.is_some()
            || o.resize.is_some()
            || o.interpolation.is_some();
        s.mean = o.mean.unwrap_or(s.mean);
        s.std = o.std.unwrap_or(s.std);
        s.scale = o.scale.unwrap_or(s.scale);
        s.resize = o.resize.unwrap_or(s.resize);
        s.interpolation = o.interpolation.unwrap_or(s.interpolation);
        if let Some(src) = &o.source {
            s.source = src.clone();
        } else if overridden {
            s.source = format!(
                "{} (overridden by the run config)",
                if known {
                    s.source.as_str()
                } else {
                    "ImageNet defaults"
                }
            );
        }
        Ok(s)
    }

    /// The weights file, or `None` for random initialisation (`weights` unset or `"none"`).
    pub fn weights_file(&self) -> Option<&std::path::Path> {
        self.weights.as_deref().filter(|p| p.as_os_str() != "none")
    }
}

/// What `precision = "auto"` becomes on `device`, and why: bf16 autocast on a GPU that
/// computes bf16 natively (compute capability 8.0, Ampere, or later), fp16 autocast with
/// dynamic loss scaling on an older GPU (where bf16 is emulated and slow), fp32 on the CPU.
pub fn auto_precision(device: tch::Device) -> (Precision, String) {
    if !device.is_cuda() {
        return (Precision::Fp32, "fp32 on the CPU".into());
    }
    match crate::util::device::cuda_bf16_native(device) {
        Some(false) => (
            Precision::Fp16,
            "fp16 autocast with dynamic loss scaling: this GPU has no native bf16 (compute \
             capability < 8.0)"
                .into(),
        ),
        Some(true) => (Precision::Bf16, "bf16 autocast (native on this GPU)".into()),
        None => (
            Precision::Bf16,
            "bf16 autocast (the GPU's compute capability could not be read)".into(),
        ),
    }
}

/// The available cores minus one (at least one): the rest is libtorch's.
pub fn default_loader_threads() -> usize {
    crate::util::device::cores().saturating_sub(1).max(1)
}

/// The dotted path of the first float in `v` that is not finite.
fn non_finite(v: &toml::Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(if path.is_empty() {
            "a value".into()
        } else {
            path.to_string()
        }),
        toml::Value::Table(t) => t.iter().find_map(|(k, x)| non_finite(x, &join(k))),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| non_finite(x, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// A tiny ViT's config file for tests: 32 px, patch 8, width 16 (`embed_dim`), depth 2.
#[cfg(test)]
pub(crate) fn tiny_vit_for_tests(dir: &std::path::Path, embed_dim: i64) -> String {
    let path = dir.join("vit.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"arch": "vit", "img_size": 32, "patch_size": 8, "embed_dim": {embed_dim}, "depth": 2, "num_heads": 2, "num_classes": 0}}"#
        ),
    )
    .expect("a temporary folder");
    path.display().to_string()
}
