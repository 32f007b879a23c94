//! TinyViT's convolutional layers: `Conv2d_BN`, the MBConv blocks of stage 0, patch merging
//! between stages, and SAM's neck after the last stage.
use crate::layers::LayerNorm2d;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// `Conv2d_BN`: a bias-free conv (`c`) and a BatchNorm (`bn`).
#[derive(Debug)]
pub(super) struct ConvBn {
    c: nn::Conv2D,
    bn: nn::BatchNorm,
    /// Stride, padding, groups, and whether the conv is depthwise (tch keeps a conv's own
    /// geometry private).
    geometry: (i64, i64, i64, bool),
}

impl ConvBn {
    pub(super) fn new(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: k / 2,
            groups,
            bias: false,
            ..Default::default()
        };
        Self {
            c: nn::conv2d(&p / "c", cin, cout, k, cfg),
            bn: nn::batch_norm2d(&p / "bn", cout, Default::default()),
            geometry: (
                stride,
                k / 2,
                groups,
                groups > 1 && groups == cin && groups == cout,
            ),
        }
    }

    pub(super) fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
        self.bn.forward_t(&self.conv(x), bn_train)
    }

    /// The convolution. A strided depthwise one in bf16 on the CPU runs at stride 1 and keeps
    /// every `stride`-th output: the same values (each output the same 3x3 sum of the same
    /// inputs; bit for bit equal in libtorch 2.11), because libtorch's bf16 kernel for a
    /// strided depthwise conv is slow. Forward + backward on a 2-core AMD EPYC (AVX512-BF16),
    /// strided / stride 1 then subsampled: `[2, 160, 24, 24]` 2.26 / 0.48 ms (LiteMedSAM's
    /// second merge at 48 px), `[2, 128, 48, 48]` with the weight's gradient 4.34 / 3.44 ms,
    /// `[2, 128, 128, 128]` 23.3 / 10.0 ms, `[2, 128, 256, 256]` 148 / 153 ms; in fp32 the
    /// strided kernel is the fast one (0.34 ms at `[2, 160, 24, 24]`), so fp32 keeps it.
    /// A frozen weight under autocast comes from the run's kept casts (`crate::reduced`).
    fn conv(&self, x: &Tensor) -> Tensor {
        let (stride, pad, groups, depthwise) = self.geometry;
        if depthwise
            && stride > 1
            && x.device() == tch::Device::Cpu
            && crate::reduced::runs_in_bf16(x)
        {
            crate::reduced::conv2d(&self.c, x, 1, pad, groups)
                .slice(2, 0, None, stride)
                .slice(3, 0, None, stride)
        } else {
            crate::reduced::conv2d(&self.c, x, stride, pad, groups)
        }
    }

    /// Whether any weight (conv, BatchNorm scale or shift) is trained.
    pub(super) fn trains(&self) -> bool {
        let bn = [self.bn.ws.as_ref(), self.bn.bs.as_ref()];
        self.c.ws.requires_grad() || bn.into_iter().flatten().any(Tensor::requires_grad)
    }
}

/// MBConv (stage 0): `GELU(x + conv3(GELU(dw3x3(GELU(conv1 x)))))` on `[batch, c, h, w]`.
#[derive(Debug)]
pub struct MbConv {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl MbConv {
    pub(super) fn new(p: nn::Path, c: i64, ratio: f64) -> Self {
        let hidden = (c as f64 * ratio) as i64;
        Self {
            conv1: ConvBn::new(&p / "conv1", c, hidden, 1, 1, 1),
            conv2: ConvBn::new(&p / "conv2", hidden, hidden, 3, 1, hidden),
            conv3: ConvBn::new(&p / "conv3", hidden, c, 1, 1, 1),
        }
    }

    pub(super) fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let h = self.conv1.forward_t(x, bn_train).gelu("none");
        let h = self.conv2.forward_t(&h, bn_train).gelu("none");
        (self.conv3.forward_t(&h, bn_train) + x).gelu("none")
    }

    pub(super) fn trains(&self) -> bool {
        [&self.conv1, &self.conv2, &self.conv3]
            .iter()
            .any(|c| c.trains())
    }
}

/// Patch merging between stages: 1x1, depthwise 3x3 (stride 1 or 2), 1x1, GELU between.
#[derive(Debug)]
pub(super) struct PatchMerging {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl PatchMerging {
    pub(super) fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        Self {
            conv1: ConvBn::new(&p / "conv1", cin, cout, 1, 1, 1),
            conv2: ConvBn::new(&p / "conv2", cout, cout, 3, stride, cout),
            conv3: ConvBn::new(&p / "conv3", cout, cout, 1, 1, 1),
        }
    }

    pub(super) fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let h = self.conv1.forward_t(x, bn_train).gelu("none");
        let h = self.conv2.forward_t(&h, bn_train).gelu("none");
        self.conv3.forward_t(&h, bn_train)
    }

    pub(super) fn trains(&self) -> bool {
        [&self.conv1, &self.conv2, &self.conv3]
            .iter()
            .any(|c| c.trains())
    }
}

/// SAM's neck (`neck.0..3`): 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d, bias-free convs.
#[derive(Debug)]
pub(super) struct Neck {
    pub(super) conv1: nn::Conv2D,
    pub(super) norm1: LayerNorm2d,
    pub(super) conv2: nn::Conv2D,
    pub(super) norm2: LayerNorm2d,
}

impl Module for Neck {
    /// Frozen conv weights under autocast come from the run's kept casts (`crate::reduced`).
    fn forward(&self, x: &Tensor) -> Tensor {
        use crate::reduced::conv2d;
        let h = self.norm1.forward(&conv2d(&self.conv1, x, 1, 0, 1));
        self.norm2.forward(&conv2d(&self.conv2, &h, 1, 1, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A strided depthwise conv on a bf16 map on the CPU (stride 1, then every second output)
    /// against libtorch's strided conv: the same forward bit for bit; input and weight
    /// gradients within bf16 round-off (|difference| <= 1e-2 * max |gradient|: the two
    /// backward kernels add the same products in another order, in bf16).
    #[test]
    fn a_strided_depthwise_conv_in_bf16_equals_libtorchs_strided_conv() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        for (c, hw) in [(8, 12), (6, 9)] {
            let mut cb = ConvBn::new(&vs.root() / format!("m{c}"), c, c, 3, 2, c);
            cb.c.ws =
                Tensor::randn([c, 1, 3, 3], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
            let x = Tensor::randn([2, c, hw, hw], (Kind::BFloat16, Device::Cpu))
                .set_requires_grad(true);
            let g = Tensor::randn(
                [2, c, (hw + 1) / 2, (hw + 1) / 2],
                (Kind::Float, Device::Cpu),
            );
            let run = |y: Tensor| {
                let loss = (y.to_kind(Kind::Float) * &g).sum(Kind::Float);
                let grads = Tensor::run_backward(&[loss], &[&x, &cb.c.ws], false, false);
                (y.detach(), grads)
            };
            let (ours, og) = run(cb.conv(&x));
            let (theirs, tg) = run(x.conv2d(&cb.c.ws, None::<&Tensor>, [2, 2], [1, 1], [1, 1], c));
            assert_eq!(ours.size(), theirs.size(), "{c} x {hw}²: output shape");
            assert!(ours.equal(&theirs), "{c} x {hw}²: forward differs");
            for (what, a, b) in [("input", &og[0], &tg[0]), ("weight", &og[1], &tg[1])] {
                let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
                let err = (&a - &b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]);
                assert!(
                    err <= 1e-2 * scale,
                    "{c} x {hw}²: {what} gradient differs by {err:e} (scale {scale:e})"
                );
            }
        }
    }
}
