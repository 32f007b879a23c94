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
        let h = linear_with(&self.fc1, fc1, x, train);
        // In place when nothing needs autograd (a frozen forward): no second hidden buffer.
        let h = if h.requires_grad() {
            h.gelu("none")
        } else {
            let mut h = h;
            let _ = h.gelu_("none");
            h
        };
        linear_with(&self.fc2, fc2, &h, train)
    }
}

/// `branch + x` for a residual connection, in the type `x + branch` has (PyTorch's type
/// promotion, as timm adds): under autocast a bf16 branch added to an fp32 stream gives fp32.
/// When neither needs autograd (a frozen forward: linear probing's features, evaluation) and
/// the types already match, the sum is written into `branch`, which must be a tensor the
/// caller owns (a layer's fresh output): no new buffer. Same value and type either way.
pub(crate) fn residual(branch: Tensor, x: &Tensor) -> Tensor {
    if branch.requires_grad() || x.requires_grad() || branch.kind() != x.kind() {
        return branch + x;
    }
    let mut b = branch;
    let _ = b.g_add_(x);
    b
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

/// Seeds of the dropout draws of one checkpointed pass: block `i` runs after
/// `tch::manual_seed(base + i)` in both the forward and the recomputation, so both see the same
/// masks. `base` is drawn from the CPU generator (no device round trip) and the generator is
/// moved on afterwards, so runs stay reproducible from their seed.
#[derive(Debug, Clone, Copy)]
struct BlockSeeds(Option<i64>);

impl BlockSeeds {
    fn new(train: bool) -> Self {
        Self(train.then(|| {
            let opts = (tch::Kind::Int64, tch::Device::Cpu);
            Tensor::randint(1 << 40, [1], opts).int64_value(&[0])
        }))
    }

    fn enter(&self, i: usize) {
        if let Some(base) = self.0 {
            tch::manual_seed(base + i as i64);
        }
    }

    fn finish(&self, blocks: usize) {
        if let Some(base) = self.0 {
            tch::manual_seed(base + blocks as i64 + 1);
        }
    }
}

/// A training step's forward and backward through a chain of blocks `x_{i+1} = block(i, x_i)`
/// with activation checkpointing: the blocks run without autograd keeping only their inputs,
/// `tail` maps the last output to the scalar loss and is back-propagated, then each block, from
/// the last to `first`, runs again from its saved input with autograd and is back-propagated
/// with the gradient of its output (`(out * grad).sum()`, whose gradient is exactly `grad`).
/// Gradients accumulate into every tensor that requires grad as in a plain backward, up to the
/// order of float sums; memory holds the blocks' inputs plus one block's activations instead
/// of every block's, for one more forward of the blocks. Dropout draws the same masks in both
/// passes (block `i` runs after `tch::manual_seed(base + i)`, `base` drawn from the CPU
/// generator); they differ from an uncheckpointed run's, which draws from the generator in
/// another order.
///
/// `first`: blocks before it train nothing and need no gradient (nothing before them trains
/// either): they run once, without autograd. `x` may require grad (a trained stem); its
/// gradient is then back-propagated into the stem's graph. Returns the loss, detached.
pub fn checkpointed_chain(
    blocks: usize,
    first: usize,
    x: &Tensor,
    train: bool,
    block: impl Fn(usize, &Tensor) -> Tensor,
    tail: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    let first = first.min(blocks);
    let seeds = BlockSeeds::new(train);
    let mut inputs: Vec<Tensor> = Vec::with_capacity(blocks - first);
    let mut t = if first > 0 {
        tch::no_grad(|| {
            let mut t = x.shallow_clone();
            for i in 0..first {
                seeds.enter(i);
                t = block(i, &t);
            }
            t
        })
    } else {
        x.detach()
    };
    tch::no_grad(|| {
        for i in first..blocks {
            inputs.push(t.shallow_clone());
            seeds.enter(i);
            t = block(i, &t);
        }
    });
    let last = t.detach().set_requires_grad(true);
    let loss = tail(&last);
    loss.backward();
    let mut grad = last.grad();
    let stem_needs_grad = first == 0 && x.requires_grad();
    for i in (first..blocks).rev() {
        let input = inputs.pop().expect("one input per block");
        let needs_grad = i > first || stem_needs_grad;
        let u = input.detach().set_requires_grad(needs_grad);
        seeds.enter(i);
        let out = block(i, &u);
        if out.requires_grad() {
            (&out * &grad).sum(out.kind()).backward();
        }
        if !needs_grad {
            break;
        }
        grad = u.grad();
        if !grad.defined() {
            // Nothing in this block depends on its input (cannot happen for residual blocks).
            grad = u.zeros_like();
        }
    }
    if stem_needs_grad && grad.defined() {
        (x * &grad).sum(x.kind()).backward();
    }
    seeds.finish(blocks);
    loss.detach()
}

/// Whether anything in a transformer block trains: a filled site, or one of its own tensors
/// that requires grad (full fine-tuning, BitFit).
pub(crate) fn block_trains(sites: &crate::sites::BlockSites, own: &[Option<&Tensor>]) -> bool {
    let s = sites;
    let filled = s.attn_branch.is_some()
        || s.attn_parallel.is_some()
        || s.after_attn.is_some()
        || s.mlp_branch.is_some()
        || s.mlp_parallel.is_some()
        || s.after_mlp.is_some()
        || s.qkv.is_some()
        || s.proj.is_some()
        || s.fc1.is_some()
        || s.fc2.is_some();
    filled || own.iter().flatten().any(|t| t.requires_grad())
}

/// Weight and bias of a Linear, for [`block_trains`].
pub(crate) fn linear_tensors(l: &nn::Linear) -> [Option<&Tensor>; 2] {
    [Some(&l.ws), l.bs.as_ref()]
}

/// Weight and bias of a LayerNorm, for [`block_trains`].
pub(crate) fn norm_tensors(n: &nn::LayerNorm) -> [Option<&Tensor>; 2] {
    [n.ws.as_ref(), n.bs.as_ref()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_residual_sum_has_the_promoted_type_of_timms_x_plus_branch() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let branch = Tensor::from_slice(&[0.5f32, 0.25, 0.125]).to_kind(tch::Kind::BFloat16);
        let sum = residual(branch.shallow_clone(), &x);
        assert_eq!(
            sum.kind(),
            tch::Kind::Float,
            "bf16 branch + fp32 stream is fp32"
        );
        assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [1.5, 2.25, 3.125]);
        assert_eq!(
            branch.kind(),
            tch::Kind::BFloat16,
            "the branch is left as it was"
        );
        // Matching types in a frozen forward: the sum goes into the branch's own buffer.
        let b = Tensor::from_slice(&[1.0f32, 1.0, 1.0]);
        let ptr = b.data_ptr();
        let s = residual(b, &x);
        assert_eq!((s.data_ptr(), s.kind()), (ptr, tch::Kind::Float));
    }
}
