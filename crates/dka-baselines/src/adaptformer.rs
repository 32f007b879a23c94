//! AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck parallel to the MLP, fed the
//! post-attention residual `x_a`: `x = x_a + MLP(LN2 x_a) + s·Up(act(Down x_a))`.
//! Defaults are the DKA authors' (d 8, GELU, s 1); [`AdaptFormerConfig::original`] is the
//! paper's (d 64, ReLU, s 0.1). Dropout 0.1 in both; Down Kaiming-uniform, Up and biases zero.
use crate::bottleneck::{Act, Bottleneck, DownInit, Feed};
use dka_core::method::{selected, Method};
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptFormerConfig {
    pub dim: i64,
    pub act: Act,
    pub scale: f64,
    pub dropout: f64,
    pub layers: Option<Vec<usize>>,
}

impl Default for AdaptFormerConfig {
    fn default() -> Self {
        Self {
            dim: 8,
            act: Act::Gelu,
            scale: 1.0,
            dropout: 0.1,
            layers: None,
        }
    }
}

impl AdaptFormerConfig {
    pub fn original() -> Self {
        Self {
            dim: 64,
            act: Act::Relu,
            scale: 0.1,
            ..Self::default()
        }
    }
}

impl Method for AdaptFormerConfig {
    fn name(&self) -> &'static str {
        "adaptformer"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        let blocks =
            crate::transformer_blocks(backbone, "adaptformer", "it adapts transformer MLPs")?;
        for (i, (dim, sites)) in blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            let m = Bottleneck::new(
                &(p / "blocks" / i / "adaptmlp"),
                dim,
                self.dim,
                DownInit::KaimingUniform,
            )
            .with(self.act, self.scale, self.dropout, false, Feed::Residual);
            sites.mlp_parallel = Some(Rc::new(m));
        }
        Ok(())
    }
}
