//! The image encoder of Segment Anything (Kirillov et al., ICCV 2023), the MedSAM backbone,
//! with timm's `VisionTransformerSAM` structure and names (`samvit_base_patch16`):
//! windowed attention with a few global blocks, decomposed relative position embeddings
//! (`attn.rel_pos_h/w`), an absolute position grid `pos_embed [1, gh, gw, dim]`, and the
//! convolutional neck (`neck.0..3`). SAM / MedSAM checkpoints (`image_encoder.*`,
//! `mlp.lin1/2`) are renamed by [`crate::convert`].
//!
//! Visual prompt tokens (`prompts`) enter only the global-attention blocks (2, 5, 8, 11 in
//! ViT-B): a windowed block's tokens see only their own window, so a prompt there would reach
//! one window at most. In a global block the `p` prompts are put in front of the flattened
//! `h*w` map (a [`TokenLayout`] with prefix `p`), take part in attention without a relative
//! position bias (the decomposed bias is defined between grid positions only), go through the
//! MLP, and are dropped after the block; deep prompting gives each global block its own.
use crate::error::{CoreError, Result};
use crate::layers::{
    block_trains, checkpointed_chain, layer_norm, linear, linear_tensors, norm_tensors,
    resample_grid_nhwc, LayerNorm2d, Mlp,
};
use crate::sites::{
    add_parallel, apply_token, linear_with, BlockSites, MapModule, PromptModule, TokenLayout,
};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamVitConfig {
    pub img_size: i64,
    pub patch_size: i64,
    pub in_chans: i64,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub window_size: i64,
    pub global_attn_indexes: Vec<i64>,
    pub neck_chans: i64,
    /// Classes of the pooled linear head (`head.fc`); 0 = no head (timm's default for SAM).
    pub num_classes: i64,
    /// LayerNorm epsilon of the blocks: timm builds them with 1e-5, the SAM / MedSAM
    /// reference code with 1e-6.
    pub norm_eps: f64,
}

impl Default for SamVitConfig {
    fn default() -> Self {
        Self {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
            neck_chans: 256,
            num_classes: 0,
            norm_eps: 1e-5,
        }
    }
}

impl SamVitConfig {
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "samvit_base_patch16" => Some(Self::default()),
            // MedSAM (Ma et al. 2024) fine-tunes SAM ViT-B; its encoder uses SAM's eps 1e-6.
            "medsam_vit_b" => Some(Self {
                norm_eps: 1e-6,
                ..Self::default()
            }),
            _ => None,
        }
    }

    pub fn grid(&self) -> i64 {
        self.img_size / self.patch_size
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch_size <= 0 || self.img_size % self.patch_size != 0 {
            return Err(CoreError::Invalid(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            )));
        }
        if self.num_heads <= 0 || self.embed_dim % self.num_heads != 0 {
            return Err(CoreError::Invalid(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )));
        }
        if self.window_size < 0 || self.neck_chans <= 0 || self.depth <= 0 || self.num_classes < 0 {
            return Err(CoreError::Invalid(
                "window_size >= 0, neck_chans > 0, depth > 0, num_classes >= 0".into(),
            ));
        }
        if let Some(i) = self
            .global_attn_indexes
            .iter()
            .find(|&&i| i < 0 || i >= self.depth)
        {
            return Err(CoreError::Invalid(format!(
                "global_attn_indexes: block {i} does not exist (depth {})",
                self.depth
            )));
        }
        Ok(())
    }
}

/// Relative position table for query/key size `s`: `[s, s, head_dim]` (timm's `get_rel_pos`).
fn rel_pos_table(s: i64, rel_pos: &Tensor) -> Tensor {
    let len = 2 * s - 1;
    let table = if rel_pos.size()[0] != len {
        rel_pos
            .transpose(0, 1)
            .unsqueeze(0)
            .upsample_linear1d([len], false, None)
            .squeeze_dim(0)
            .transpose(0, 1)
    } else {
        rel_pos.shallow_clone()
    };
    let opts = (Kind::Int64, rel_pos.device());
    let q = Tensor::arange(s, opts).unsqueeze(1);
    let k = Tensor::arange(s, opts).unsqueeze(0);
    let idx = (q - k + (s - 1)).reshape([-1]);
    table.index_select(0, &idx).reshape([s, s, -1])
}

#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    num_heads: i64,
}

impl Attention {
    /// `x: [batch, prefix + h*w, dim]`: `prefix` prompt tokens, then an `h x w` grid (a window
    /// or the whole map). The relative position bias applies between grid tokens only; prompt
    /// tokens attend and are attended to without one.
    fn forward_t(
        &self,
        x: &Tensor,
        layout: TokenLayout,
        sites: &BlockSites,
        train: bool,
    ) -> Tensor {
        let (b, t, d) = x
            .size3()
            .expect("SAM attention input is [batch, tokens, dim]");
        let (p, h, w) = (layout.prefix, layout.h, layout.w);
        let (n, nh) = (h * w, self.num_heads);
        let hd = d / nh;
        // q, k, v: [batch, heads, tokens, head_dim], the 4-D layout the fused attention
        // kernels take (a 3-D `[batch * heads, ...]` layout makes them fall back to the math
        // path, which materialises every score in fp32).
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train)
            .view([b, t, 3, nh, hd])
            .permute([2, 0, 3, 1, 4]);
        // unbind, not three selects: unbind's backward stacks the three gradients, while each
        // select's backward fills a zero tensor of qkv's full size and the three are summed
        // (timm unbinds too).
        let (q, k, v) = match &qkv.unbind(0)[..] {
            [q, k, v] => (q.shallow_clone(), k.shallow_clone(), v.shallow_clone()),
            _ => unreachable!("qkv holds q, k and v"),
        };
        let rh = rel_pos_table(h, &self.rel_pos_h);
        let rw = rel_pos_table(w, &self.rel_pos_w);
        let rq = q.narrow(2, p, n).reshape([b * nh, h, w, hd]);
        let rel_h = Tensor::einsum("bhwc,hkc->bhwk", &[&rq, &rh], None::<i64>);
        let rel_w = Tensor::einsum("bhwc,wkc->bhwk", &[&rq, &rw], None::<i64>);
        // The decomposed relative-position bias, as the attention mask: [batch, heads, t, t].
        let mut bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape([b, nh, n, n]);
        if p > 0 {
            bias = bias.constant_pad_nd([p, 0, p, 0]);
        }
        let o = crate::attention::attention(&q, &k, &v, Some(&bias));
        let o = o.transpose(1, 2).reshape([b, t, d]);
        linear_with(&self.proj, &sites.proj, &o, train)
    }
}

/// One SAM block; `window_size` 0 means global attention.
#[derive(Debug)]
pub struct SamBlock {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    pub window_size: i64,
    pub sites: BlockSites,
}

impl SamBlock {
    fn new(p: nn::Path, c: &SamVitConfig, window_size: i64) -> Self {
        let d = c.embed_dim;
        let hd = d / c.num_heads;
        let rel = if window_size > 0 {
            window_size
        } else {
            c.grid()
        };
        let a = &p / "attn";
        Self {
            norm1: layer_norm(&p / "norm1", d, c.norm_eps),
            attn: Attention {
                qkv: linear(&a / "qkv", d, 3 * d, c.qkv_bias),
                proj: linear(&a / "proj", d, d, true),
                rel_pos_h: a.zeros("rel_pos_h", &[2 * rel - 1, hd]),
                rel_pos_w: a.zeros("rel_pos_w", &[2 * rel - 1, hd]),
                num_heads: c.num_heads,
            },
            norm2: layer_norm(&p / "norm2", d, c.norm_eps),
            mlp: Mlp::new(&p / "mlp", d, (d as f64 * c.mlp_ratio) as i64),
            window_size,
            sites: BlockSites::default(),
        }
    }

    /// Attention over `normed: [batch, prefix + h*w, dim]` (prompt tokens only in a global
    /// block), windowed unless the block is global.
    fn attend(&self, normed: &Tensor, layout: TokenLayout, train: bool) -> Tensor {
        let ws = self.window_size;
        if ws == 0 {
            return self.attn.forward_t(normed, layout, &self.sites, train);
        }
        let (b, _, d) = normed.size3().expect("3-D");
        let (h, w) = (layout.h, layout.w);
        let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let (hp, wp) = (h + ph, w + pw);
        let windows = normed
            .view([b, h, w, d])
            .constant_pad_nd([0, 0, 0, pw, 0, ph])
            .view([b, hp / ws, ws, wp / ws, ws, d])
            .permute([0, 1, 3, 2, 4, 5])
            .contiguous()
            .view([-1, ws * ws, d]);
        let win = TokenLayout {
            prefix: 0,
            h: ws,
            w: ws,
        };
        let o = self.attn.forward_t(&windows, win, &self.sites, train);
        o.view([b, hp / ws, wp / ws, ws, ws, d])
            .permute([0, 1, 3, 2, 4, 5])
            .contiguous()
            .view([b, hp, wp, d])
            .narrow(1, 0, h)
            .narrow(2, 0, w)
            .reshape([b, h * w, d])
    }

    /// Whether anything in this block trains (a filled site or a tensor requiring grad).
    pub fn trains(&self) -> bool {
        let a = &self.attn;
        let mut own: Vec<Option<&Tensor>> = vec![Some(&a.rel_pos_h), Some(&a.rel_pos_w)];
        own.extend(norm_tensors(&self.norm1));
        own.extend(norm_tensors(&self.norm2));
        for l in [&a.qkv, &a.proj, &self.mlp.fc1, &self.mlp.fc2] {
            own.extend(linear_tensors(l));
        }
        block_trains(&self.sites, &own)
    }

    /// `x: [batch, h, w, dim]`. `prompts: [batch, p, dim]` (global blocks only) go first in
    /// the sequence this block sees and are dropped from its output.
    pub fn forward_t(&self, x: &Tensor, prompts: Option<&Tensor>, train: bool) -> Tensor {
        let (b, h, w, d) = x.size4().expect("SAM block input is [batch, h, w, dim]");
        // Inserted modules may share work between their applications in this block.
        let _block = crate::sites::BlockScope::enter();
        let grid = x.reshape([b, h * w, d]);
        let (x, prefix) = match prompts {
            Some(pr) => {
                assert_eq!(self.window_size, 0, "prompt tokens need a global block");
                (Tensor::cat(&[pr, &grid], 1), pr.size()[1])
            }
            None => (grid, 0),
        };
        let layout = TokenLayout { prefix, h, w };
        let s = &self.sites;
        let normed = self.norm1.forward(&x);
        let a = self.attend(&normed, layout, train);
        let a = apply_token(&s.attn_branch, a, layout, train);
        let x = add_parallel(&s.attn_parallel, &x + a, &x, &normed, layout, train);
        let x = apply_token(&s.after_attn, x, layout, train);
        let normed = self.norm2.forward(&x);
        let m = apply_token(
            &s.mlp_branch,
            self.mlp.forward_t(&normed, &s.fc1, &s.fc2, train),
            layout,
            train,
        );
        let x = add_parallel(&s.mlp_parallel, &x + m, &x, &normed, layout, train);
        apply_token(&s.after_mlp, x, layout, train)
            .narrow(1, prefix, h * w)
            .reshape([b, h, w, d])
    }
}

#[derive(Debug)]
pub struct SamVit {
    pub cfg: SamVitConfig,
    patch_embed: nn::Conv2D,
    pos_embed: Tensor,
    pub blocks: Vec<SamBlock>,
    neck: nn::Sequential,
    head: Option<nn::Linear>,
    /// Prompt-token site of the global-attention blocks (visual prompt tuning; see
    /// [`PromptModule`]: index `j` is the `j`-th global block).
    pub prompts: Option<Rc<dyn PromptModule>>,
    /// Input site: maps the image batch before the patch embedding (visual prompt padding).
    pub input_prompt: Option<Rc<dyn MapModule>>,
}

impl SamVit {
    pub fn new(p: &nn::Path, cfg: SamVitConfig) -> Result<Self> {
        cfg.validate()?;
        let (d, g, nc) = (cfg.embed_dim, cfg.grid(), cfg.neck_chans);
        let conv = nn::ConvConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embed = nn::conv2d(
            p / "patch_embed" / "proj",
            cfg.in_chans,
            d,
            cfg.patch_size,
            conv,
        );
        let pos_embed = p.zeros("pos_embed", &[1, g, g, d]);
        let blocks = (0..cfg.depth)
            .map(|i| {
                let ws = if cfg.global_attn_indexes.contains(&i) {
                    0
                } else {
                    cfg.window_size
                };
                SamBlock::new(p / "blocks" / i, &cfg, ws)
            })
            .collect();
        let nb = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        let neck = nn::seq()
            .add(nn::conv2d(p / "neck" / "0", d, nc, 1, nb))
            .add(LayerNorm2d::new(p / "neck" / "1", nc, 1e-6))
            .add(nn::conv2d(
                p / "neck" / "2",
                nc,
                nc,
                3,
                nn::ConvConfig { padding: 1, ..nb },
            ))
            .add(LayerNorm2d::new(p / "neck" / "3", nc, 1e-6));
        let head =
            (cfg.num_classes > 0).then(|| linear(p / "head" / "fc", nc, cfg.num_classes, true));
        Ok(Self {
            cfg,
            patch_embed,
            pos_embed,
            blocks,
            neck,
            head,
            prompts: None,
            input_prompt: None,
        })
    }

    pub fn check_input(&self, shape: &[i64]) -> Result<()> {
        crate::layers::check_patch_input(shape, self.cfg.in_chans, self.cfg.patch_size)
    }

    /// Input site, patch embedding and position embedding: `[batch, h, w, dim]`.
    fn stem(&self, x: &Tensor, train: bool) -> Tensor {
        let x = match &self.input_prompt {
            Some(m) => m.forward_t(x, train),
            None => x.shallow_clone(),
        };
        let t = self.patch_embed.forward(&x).permute([0, 2, 3, 1]);
        let (_, h, w, _) = t.size4().expect("4-D");
        t + resample_grid_nhwc(&self.pos_embed, h, w)
    }

    /// Block `i` on the grid `t: [batch, h, w, dim]`, with its prompt tokens if it is a global
    /// block that gets some.
    fn block_step(&self, i: usize, t: &Tensor, train: bool) -> Tensor {
        let blk = &self.blocks[i];
        let prompts = if blk.window_size == 0 {
            let global = self.blocks[..i]
                .iter()
                .filter(|b| b.window_size == 0)
                .count();
            let b = t.size()[0];
            self.prompts
                .as_ref()
                .and_then(|m| m.prompts(global, b, train))
        } else {
            None
        };
        blk.forward_t(t, prompts.as_ref(), train)
    }

    /// Token grid after the blocks, `[batch, h, w, dim]` (before the neck).
    pub fn forward_grid(&self, x: &Tensor, train: bool) -> Tensor {
        let mut t = self.stem(x, train);
        for i in 0..self.blocks.len() {
            t = self.block_step(i, &t, train);
        }
        t
    }

    /// Whether the input site, patch embedding or position embedding train.
    fn stem_trains(&self) -> bool {
        self.input_prompt.is_some()
            || [Some(&self.patch_embed.ws), self.patch_embed.bs.as_ref()]
                .into_iter()
                .chain([Some(&self.pos_embed)])
                .flatten()
                .any(|t| t.requires_grad())
    }

    /// Index of the first block with anything to train (0 with prompt tokens or a trained
    /// stem); `blocks.len()` when none does.
    pub fn first_trained_block(&self) -> usize {
        if self.prompts.is_some() || self.stem_trains() {
            return 0;
        }
        self.blocks
            .iter()
            .position(|b| b.trains())
            .unwrap_or(self.blocks.len())
    }

    /// One training step's forward and backward with activation checkpointing of the blocks
    /// ([`checkpointed_chain`]): `loss(features)` (the neck's map) is back-propagated into
    /// every tensor that requires grad. For MedSAM's 1024 x 1024 input: memory holds the
    /// blocks' inputs and one block's activations. Returns the loss, detached.
    pub fn forward_backward_checkpointed(
        &self,
        x: &Tensor,
        train: bool,
        loss: impl FnOnce(&Tensor) -> Tensor,
    ) -> Tensor {
        let first = self.first_trained_block();
        let t = if first > 0 {
            tch::no_grad(|| self.stem(x, train))
        } else {
            self.stem(x, train)
        };
        checkpointed_chain(
            self.blocks.len(),
            first,
            &t,
            train,
            |i, t| self.block_step(i, t, train),
            |t| loss(&self.neck.forward(&t.permute([0, 3, 1, 2]))),
        )
    }

    /// timm's `forward_features`: the neck's map `[batch, neck_chans, h, w]`.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Tensor {
        self.neck
            .forward(&self.forward_grid(x, train).permute([0, 3, 1, 2]))
    }

    pub fn pool(&self, features: &Tensor) -> Tensor {
        features.mean_dim([2i64, 3].as_slice(), false, None)
    }

    pub fn head(&self) -> Option<&nn::Linear> {
        self.head.as_ref()
    }
}
