//! AIM (Yang et al., ICLR 2023), image form (no temporal adapter):
//! `x = x + S(Attn(LN1 x))` with `S(z) = z + fc2(GELU(fc1 z))`, and
//! `x = x + MLP(LN2 x) + 0.5·M(LN2 x)` with `M(z) = fc2(GELU(fc1 z))`; hidden 0.25·D,
//! every fc2 (`up`) zero-init. The DKA authors' version dropped the attention output; this one
//! does not (see METHODS.md).
use crate::bottleneck::{Act, Bottleneck, DownInit, Feed};
use dka_core::method::{selected, Method};
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimConfig {
    /// Hidden width as a fraction of D.
    pub ratio: f64,
    /// Scale of the MLP adapter.
    pub mlp_scale: f64,
    pub layers: Option<Vec<usize>>,
}

impl Default for AimConfig {
    fn default() -> Self {
        Self {
            ratio: 0.25,
            mlp_scale: 0.5,
            layers: None,
        }
    }
}

impl Method for AimConfig {
    fn name(&self) -> &'static str {
        "aim"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        let blocks = crate::transformer_blocks(backbone, "aim", "it adapts transformer branches")?;
        for (i, (dim, sites)) in blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            let q = p / "blocks" / i;
            let hidden = ((dim as f64) * self.ratio).round() as i64;
            let s = Bottleneck::new(&(&q / "s_adapter"), dim, hidden, DownInit::KaimingUniform)
                .with(Act::Gelu, 1.0, 0.0, true, Feed::Normed);
            let m = Bottleneck::new(&(&q / "mlp_adapter"), dim, hidden, DownInit::KaimingUniform)
                .with(Act::Gelu, self.mlp_scale, 0.0, false, Feed::Normed);
            sites.attn_branch = Some(Rc::new(s));
            sites.mlp_parallel = Some(Rc::new(m));
        }
        Ok(())
    }
}
