//! Small building blocks shared by the backbones.
use crate::error::{CoreError, Result};
use crate::sites::{linear_with, LinearDelta};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::Tensor;

pub fn linear(p: nn::Path, din: i64, dout: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        din,
        dout,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}

pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// timm's `Mlp`: `fc2(GELU(fc1 x))` (exact erf GELU), with delta sites on both Linears.
#[derive(Debug)]
pub struct Mlp {
    pub fc1: nn::Linear,
    pub fc2: nn::Linear,
}

impl Mlp {
    pub fn new(p: nn::Path, dim: i64, hidden: i64) -> Self {
        Self {
            fc1: linear(&p / "fc1", dim, hidden, true),
            fc2: linear(&p / "fc2", hidden, dim, true),
        }
    }

    pub fn forward_t(
        &self,
        x: &Tensor,
        fc1: &Option<Rc<dyn LinearDelta>>,
        fc2: &Option<Rc<dyn LinearDelta>>,
        train: bool,
    ) -> Tensor {
        let h = linear_with(&self.fc1, fc1, x, train).gelu("none");
        linear_with(&self.fc2, fc2, &h, train)
    }
}

/// LayerNorm over the channels of an NCHW map (timm's `LayerNorm2d`).
#[derive(Debug)]
pub struct LayerNorm2d(nn::LayerNorm);

impl LayerNorm2d {
    pub fn new(p: nn::Path, channels: i64, eps: f64) -> Self {
        Self(layer_norm(p, channels, eps))
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.0
            .forward(&x.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
    }
}

/// Resize a `[1, gh, gw, dim]` embedding grid to `[1, h, w, dim]` as timm does
/// (`F.interpolate(mode="bicubic", antialias=True, align_corners=False)`).
pub fn resample_grid_nhwc(grid: &Tensor, h: i64, w: i64) -> Tensor {
    let (_, gh, gw, _) = grid.size4().expect("embedding grid is 4-D");
    if gh == h && gw == w {
        return grid.shallow_clone();
    }
    grid.permute([0, 3, 1, 2])
        .internal_upsample_bicubic2d_aa([h, w], false, None, None)
        .permute([0, 2, 3, 1])
}

/// Checks an image batch `[batch, in_chans, H, W]` for a patch-embedding model.
pub fn check_patch_input(shape: &[i64], in_chans: i64, patch: i64) -> Result<()> {
    match shape {
        [_, c, h, w] if *c == in_chans && h % patch == 0 && w % patch == 0 && *h > 0 && *w > 0 => {
            Ok(())
        }
        _ => Err(CoreError::InputShape {
            name: "input".into(),
            shape: shape.to_vec(),
            expected: format!("[batch, {in_chans}, H, W] with H and W multiples of {patch}"),
        }),
    }
}
