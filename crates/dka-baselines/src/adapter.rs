//! Adapter (Houlsby et al., ICML 2019): a sequential bottleneck `h + Up(GELU(Down h))` on the
//! output of the attention and of the MLP sublayer (inside each residual branch); `Up` starts
//! at zero. On a ResNet, one after each residual block (1x1 projections).
use crate::bottleneck::{Act, Bottleneck, DownInit, Feed};
use dka_core::method::{selected, Method};
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    /// Bottleneck width d.
    pub dim: i64,
    /// Blocks (ViT) or stages (ResNet) that get adapters; `None` = all.
    pub layers: Option<Vec<usize>>,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            layers: None,
        }
    }
}

impl AdapterConfig {
    fn module(&self, p: &nn::Path, width: i64) -> Bottleneck {
        Bottleneck::new(p, width, self.dim, DownInit::KaimingUniform).with(
            Act::Gelu,
            1.0,
            0.0,
            true,
            Feed::Normed,
        )
    }
}

impl Method for AdapterConfig {
    fn name(&self) -> &'static str {
        "adapter"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        if let Backbone::ResNet(m) = backbone {
            for (k, i, blk) in m.blocks_mut(&self.layers) {
                let q = p / format!("layer{}", k + 1) / i / "adapter";
                blk.sites.after_block = Some(Rc::new(self.module(&q, blk.out_channels)));
            }
            return Ok(());
        }
        for (i, (dim, sites)) in backbone
            .token_blocks_mut()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            let q = p / "blocks" / i;
            sites.attn_branch = Some(Rc::new(self.module(&(&q / "adapter_attn"), dim)));
            sites.mlp_branch = Some(Rc::new(self.module(&(&q / "adapter_mlp"), dim)));
        }
        Ok(())
    }
}
