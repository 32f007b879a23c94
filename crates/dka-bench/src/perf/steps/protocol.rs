//! The protocol of `dka bench steps`: the cases both implementations read, and the requests
//! the driver sends a worker (one JSON object per line; `benches/reference/steps.py` reads the
//! same).
use crate::config::run::Precision;
use dka_baselines::MethodConfig;
use dka_core::BackboneConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a case trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseKind {
    /// Pooled features, a Linear head, cross-entropy.
    Classify,
    /// Segmenter's linear decoder on the patch tokens, bilinear upsampling, cross-entropy.
    Segment,
    /// DKA modules alone on a token grid (`x = DKA_i(DKA_i(x))` per layer, "mona" style),
    /// loss `mean(out^2)`.
    Stack,
}

/// The DKA layer stack of a [`CaseKind::Stack`] case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StackShape {
    pub dim: i64,
    pub h: i64,
    pub w: i64,
    pub layers: usize,
}

/// One benchmark case, as both implementations read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    pub kind: CaseKind,
    /// This project's backbone (a JSON config: the reference reads `arch` from it).
    pub backbone: Option<BackboneConfig>,
    /// The timm model the reference builds, and its extra constructor arguments.
    pub timm: Option<String>,
    pub timm_kwargs: serde_json::Value,
    pub method: MethodConfig,
    pub batch: i64,
    pub img: i64,
    pub classes: i64,
    pub stack: Option<StackShape>,
    pub head_lr: f64,
    pub adapter_lr: f64,
    pub clip_grad_norm: Option<f64>,
    /// fp32, or bf16 autocast (the forward; weights, gradients and optimiser state fp32), in
    /// both implementations.
    #[serde(default = "fp32")]
    pub precision: Precision,
}

fn fp32() -> Precision {
    Precision::Fp32
}

/// A request to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Build the case on `device`; `export`: write the shared tensors to `file`, else read them.
    /// `checkpoint`: activation checkpointing of the backbone blocks (this project only).
    Setup {
        case: Case,
        file: PathBuf,
        device: String,
        export: bool,
        checkpoint: bool,
    },
    /// One training step; the reference counts its FLOPs when asked.
    Step {
        count_flops: bool,
    },
    /// Reset the peak-memory statistic (CPU: the resident set's high-water mark).
    ResetPeak,
    /// Peak and current memory.
    Memory,
    /// fp32 GEMM throughput on `device`: median of `reps` products of two `n x n` matrices.
    Gemm {
        n: i64,
        reps: usize,
        device: String,
        /// bf16 operands (the GEMMs of a bf16 autocast step).
        #[serde(default)]
        bf16: bool,
    },
    /// `steps` training steps under the profiler (libtorch's on this side, `torch.profiler` on
    /// the reference's), its Chrome trace written to `out`.
    Profile {
        steps: usize,
        out: PathBuf,
    },
    Info,
    Quit,
}
