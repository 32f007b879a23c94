//! BitFit (Zaken et al., ACL 2022): only the backbone's bias terms (and the head) train.
use dka_core::method::Method;
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use tch::nn;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitFit {}

impl Method for BitFit {
    fn name(&self) -> &'static str {
        "bitfit"
    }

    fn attach(&self, _backbone: &mut Backbone, _p: &nn::Path) -> Result<()> {
        Ok(())
    }

    /// Every `*.bias` of the backbone: attention, MLP, norms, patch embedding, BatchNorm shifts.
    fn trains_backbone(&self, name: &str) -> bool {
        name.ends_with(".bias")
    }

    /// 1e-3: our choice (the paper gives none), the top of BitFit's own grid (1e-4 … 1e-3):
    /// biases only shift activations, and like adapters they need a large rate to move.
    fn backbone_lr(&self) -> Option<f64> {
        Some(1e-3)
    }
}
