//! CIAT, as the DKA authors ran it: a parallel bottleneck D→8→D with GELU on `LN1 x` and on
//! `LN2 x`, added to each branch, with no inner skip. Up starts at zero.
use crate::bottleneck::{Act, Bottleneck, DownInit, Feed};
use dka_core::method::{selected, Method};
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CiatConfig {
    pub dim: i64,
    pub layers: Option<Vec<usize>>,
}

impl Default for CiatConfig {
    fn default() -> Self {
        Self {
            dim: 8,
            layers: None,
        }
    }
}

impl Method for CiatConfig {
    fn name(&self) -> &'static str {
        "ciat"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        let blocks = crate::transformer_blocks(backbone, "ciat", "it adapts transformer branches")?;
        for (i, (dim, sites)) in blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            let q = p / "blocks" / i;
            let make =
                |name: &str| {
                    Rc::new(
                        Bottleneck::new(&(&q / name), dim, self.dim, DownInit::KaimingUniform)
                            .with(Act::Gelu, 1.0, 0.0, false, Feed::Normed),
                    )
                };
            sites.attn_parallel = Some(make("ciat_attn"));
            sites.mlp_parallel = Some(make("ciat_mlp"));
        }
        Ok(())
    }
}
