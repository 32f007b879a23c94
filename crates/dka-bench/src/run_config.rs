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

/// Optimiser with the paper's asynchronous learning rates: adapter and head in their own
/// parameter groups (DKA: 1e-3 and 1e-4; Figure 7 sweeps both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub adapter_lr: f64,
    pub head_lr: f64,
    /// Learning rate of trained backbone tensors (full fine-tuning, BitFit); default adapter_lr.
    pub backbone_lr: Option<f64>,
    pub weight_decay: f64,
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
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimConfig,
    pub selection: Selection,
    pub seg_loss: SegLoss,
    /// Segmentation head: `linear` (Segmenter's linear decoder) or `mask-transformer`.
    pub decoder: crate::decoder::DecoderKind,
    /// Width of the mask transformer (default: the backbone's feature width).
    pub decoder_dim: Option<i64>,
    /// Random resized crop + flip on training images (never on evaluation images).
    pub augment: bool,
    /// Seeds initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Data-loading threads (libtorch keeps its own).
    pub loader_threads: usize,
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
            epochs: 100,
            batch_size: 64,
            optimizer: OptimConfig::default(),
            selection: Selection::Last,
            seg_loss: SegLoss::Ce,
            decoder: Default::default(),
            decoder_dim: None,
            augment: true,
            seed: 0,
            loader_threads: 1,
        }
    }
}

impl RunConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.epochs > 0 && self.batch_size > 0,
            "epochs and batch_size must be positive"
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
}
