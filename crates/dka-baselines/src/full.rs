//! Full fine-tuning: every backbone tensor trains (BatchNorm statistics too).
use dka_core::method::Method;
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use tch::nn;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullFineTune {}

impl Method for FullFineTune {
    fn name(&self) -> &'static str {
        "full"
    }

    fn attach(&self, backbone: &mut Backbone, _p: &nn::Path) -> Result<()> {
        backbone.set_freeze_bn(false);
        Ok(())
    }

    fn trains_backbone(&self, _name: &str) -> bool {
        true
    }

    /// 1e-5: our choice (the paper gives none), a common rate for fine-tuning a pretrained ViT
    /// with Adam; the adapters' 1e-3 destroys pretrained features.
    fn backbone_lr(&self) -> Option<f64> {
        Some(1e-5)
    }
}
