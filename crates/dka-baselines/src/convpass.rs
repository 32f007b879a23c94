//! Convpass (Jie & Deng, 2022): convolutional bypasses parallel to both branches,
//! `x = x + Attn(LN1 x) + s·C(LN1 x)`, `x = x + MLP(LN2 x) + s·C'(LN2 x)`, with
//! `C = Up ∘ Dropout ∘ QuickGELU ∘ Conv3x3 ∘ QuickGELU ∘ Down` (D→8, Xavier, zero bias; the
//! 3x3 conv on the patch grid, the class token as its own 1x1 map; Up zero-init).
//! Original: s per dataset in {0.01 … 100}; DKA authors: s = 1 (the default). On a ResNet the
//! same bypass runs beside each residual block (1x1 down/up, the 3x3 conv taking the block's
//! stride).
use crate::bottleneck::Act;
use dka_core::method::{selected, Method};
use dka_core::sites::{MapModule, ParallelModule, TokenLayout};
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvpassConfig {
    pub dim: i64,
    pub scale: f64,
    pub dropout: f64,
    pub layers: Option<Vec<usize>>,
}

impl Default for ConvpassConfig {
    fn default() -> Self {
        Self {
            dim: 8,
            scale: 1.0,
            dropout: 0.1,
            layers: None,
        }
    }
}

fn xavier(fan_in: i64, fan_out: i64) -> nn::Init {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -a, up: a }
}

#[derive(Debug)]
struct Bypass {
    down: nn::Linear,
    conv_w: Tensor,
    conv_b: Tensor,
    up: nn::Linear,
    stride: i64,
    scale: f64,
    dropout: f64,
    /// Where its tensors are (`blocks.0.adapter_attn`), for export.
    prefix: String,
}

impl Bypass {
    fn new(p: &nn::Path, cin: i64, cout: i64, c: &ConvpassConfig, stride: i64) -> Self {
        let d = c.dim;
        let zero_b = Some(nn::Init::Const(0.0));
        let down = nn::linear(
            p / "down",
            cin,
            d,
            nn::LinearConfig {
                ws_init: xavier(cin, d),
                bs_init: zero_b,
                bias: true,
            },
        );
        let up = nn::linear(
            p / "up",
            d,
            cout,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: zero_b,
                bias: true,
            },
        );
        let conv_w = (p / "conv").var("weight", &[d, d, 3, 3], xavier(9 * d, 9 * d));
        let conv_b = (p / "conv").zeros("bias", &[d]);
        Self {
            down,
            conv_w,
            conv_b,
            up,
            stride,
            scale: c.scale,
            dropout: c.dropout,
            prefix: dka_core::sites::path_name(p, ""),
        }
    }

    fn conv(&self, map: &Tensor) -> Tensor {
        map.conv2d(
            &self.conv_w,
            Some(&self.conv_b),
            [self.stride, self.stride],
            [1, 1],
            [1, 1],
            1,
        )
    }
}

impl ParallelModule for Bypass {
    /// `down`, `conv` (a dense 3x3, stride `stride`) and `up` under `prefix`, and the scale.
    fn export(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "kind": "convpass",
            "prefix": self.prefix,
            "stride": self.stride,
            "scale": self.scale,
        }))
    }

    fn forward_t(&self, _x: &Tensor, normed: &Tensor, l: TokenLayout, train: bool) -> Tensor {
        let (b, _, _) = normed.size3().expect("tokens are 3-D");
        let z = Act::QuickGelu.apply(&self.down.forward(normed));
        let d = z.size()[2];
        let grid = z
            .narrow(1, l.prefix, l.h * l.w)
            .reshape([b, l.h, l.w, d])
            .permute([0, 3, 1, 2]);
        let patches = self
            .conv(&grid)
            .permute([0, 2, 3, 1])
            .reshape([b, l.h * l.w, d]);
        let y = if l.prefix > 0 {
            // A 1x1 map under a padded 3x3 conv meets only the centre tap.
            let centre = self.conv_w.select(3, 1).select(2, 1);
            let prefix = z.narrow(1, 0, l.prefix).matmul(&centre.tr()) + &self.conv_b;
            Tensor::cat(&[prefix, patches], 1)
        } else {
            patches
        };
        let y = Act::QuickGelu.apply(&y).dropout(self.dropout, train);
        self.up.forward(&y) * self.scale
    }
}

impl MapModule for Bypass {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let z = Act::QuickGelu
            .apply(&self.down.forward(&x.permute([0, 2, 3, 1])))
            .permute([0, 3, 1, 2]);
        let y = Act::QuickGelu
            .apply(&self.conv(&z))
            .dropout(self.dropout, train);
        (self.up.forward(&y.permute([0, 2, 3, 1])) * self.scale).permute([0, 3, 1, 2])
    }
}

impl Method for ConvpassConfig {
    fn name(&self) -> &'static str {
        "convpass"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        if let Backbone::ResNet(m) = backbone {
            for (k, i, blk) in m.blocks_mut(&self.layers) {
                let q = p / format!("layer{}", k + 1) / i / "convpass";
                blk.sites.parallel = Some(Rc::new(Bypass::new(
                    &q,
                    blk.in_channels,
                    blk.out_channels,
                    self,
                    blk.stride,
                )));
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
            sites.attn_parallel = Some(Rc::new(Bypass::new(
                &(&q / "convpass_attn"),
                dim,
                dim,
                self,
                1,
            )));
            sites.mlp_parallel = Some(Rc::new(Bypass::new(
                &(&q / "convpass_mlp"),
                dim,
                dim,
                self,
                1,
            )));
        }
        Ok(())
    }
}
