//! Vision Transformer (Dosovitskiy et al., ICLR 2021) with timm's state-dict names.
//!
//! Keys: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj,
//! ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm` / `fc_norm`, `head`: a timm
//! `model.safetensors` loads as it is. With every site empty the output equals timm's
//! `VisionTransformer` (checked by `tests/parity.rs`, fixtures from `python/make_fixtures.py`).
//! The position embedding is resampled (bicubic, antialiased, as timm's `dynamic_img_size`) when
//! the input grid differs from `img_size / patch_size`; non-square inputs work.
use crate::error::{CoreError, Result};
use crate::layers::{
    block_trains, checkpointed_chain, layer_norm, linear, linear_tensors, norm_tensors,
    resample_grid_nhwc, residual, Mlp,
};
use crate::sites::{add_parallel, apply_token, linear_with, BlockSites, PromptModule, TokenLayout};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::Tensor;

/// An image size: one number for a square, or `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImgSize {
    Square(i64),
    Rect([i64; 2]),
}

impl ImgSize {
    pub fn hw(&self) -> (i64, i64) {
        match *self {
            ImgSize::Square(s) => (s, s),
            ImgSize::Rect([h, w]) => (h, w),
        }
    }
}

/// How `forward_head` pools the tokens (timm's `global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalPool {
    #[serde(rename = "token")]
    Token,
    #[serde(rename = "avg")]
    Avg,
    #[serde(rename = "")]
    None,
}

/// timm's `VisionTransformer` constructor fields (defaults are timm's, i.e. ViT-B/16).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitConfig {
    pub img_size: ImgSize,
    pub patch_size: i64,
    pub in_chans: i64,
    pub num_classes: i64,
    pub global_pool: GlobalPool,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// Layer-scale init value; `Some` adds `ls1.gamma` / `ls2.gamma`.
    pub init_values: Option<f64>,
    pub class_token: bool,
    /// Norm after pooling instead of before; `None` = timm's rule (on for `avg`).
    pub fc_norm: Option<bool>,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            img_size: ImgSize::Square(224),
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            global_pool: GlobalPool::Token,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            init_values: None,
            class_token: true,
            fc_norm: None,
        }
    }
}

impl VitConfig {
    pub fn preset(name: &str) -> Option<Self> {
        let (embed_dim, num_heads) = match name {
            "vit_tiny_patch16_224" => (192, 3),
            "vit_small_patch16_224" => (384, 6),
            "vit_base_patch16_224" => (768, 12),
            _ => return None,
        };
        Some(Self {
            embed_dim,
            num_heads,
            ..Self::default()
        })
    }

    pub fn grid(&self) -> (i64, i64) {
        let (h, w) = self.img_size.hw();
        (h / self.patch_size, w / self.patch_size)
    }

    pub fn num_prefix_tokens(&self) -> i64 {
        i64::from(self.class_token)
    }

    fn use_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(self.global_pool == GlobalPool::Avg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CoreError::Invalid(m));
        let (h, w) = self.img_size.hw();
        if self.patch_size <= 0 || h % self.patch_size != 0 || w % self.patch_size != 0 {
            return bad(format!(
                "img_size {h}x{w} is not a multiple of patch_size {}",
                self.patch_size
            ));
        }
        if self.num_heads <= 0 || self.embed_dim % self.num_heads != 0 {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.depth <= 0 || self.in_chans <= 0 || self.mlp_ratio <= 0.0 || self.num_classes < 0 {
            return bad("depth, in_chans and mlp_ratio must be positive, num_classes >= 0".into());
        }
        if self.global_pool == GlobalPool::Token && !self.class_token {
            return bad("global_pool 'token' needs class_token = true".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    fn forward_t(&self, x: &Tensor, sites: &BlockSites, train: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("tokens are [batch, tokens, dim]");
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train)
            .reshape([b, n, 3, self.num_heads, d / self.num_heads])
            .permute([2, 0, 3, 1, 4]);
        // unbind, not three selects: unbind's backward stacks the three gradients, while each
        // select's backward fills a zero tensor of qkv's full size and the three are summed
        // (timm unbinds too).
        let (q, k, v) = match &qkv.unbind(0)[..] {
            [q, k, v] => (q.shallow_clone(), k.shallow_clone(), v.shallow_clone()),
            _ => unreachable!("qkv holds q, k and v"),
        };
        let o = crate::attention::attention(&q, &k, &v, None);
        let o = o.transpose(1, 2).reshape([b, n, d]);
        linear_with(&self.proj, &sites.proj, &o, train)
    }
}

/// One transformer block; `sites` are empty until a method fills them.
#[derive(Debug)]
pub struct VitBlock {
    norm1: nn::LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    ls2: Option<Tensor>,
    pub sites: BlockSites,
}

impl VitBlock {
    pub fn new(p: nn::Path, c: &VitConfig) -> Self {
        let d = c.embed_dim;
        let ls = |name: &str| {
            c.init_values
                .map(|v| (&p / name).var("gamma", &[d], nn::Init::Const(v)))
        };
        Self {
            norm1: layer_norm(&p / "norm1", d, 1e-6),
            attn: Attention {
                qkv: linear(&p / "attn" / "qkv", d, 3 * d, c.qkv_bias),
                proj: linear(&p / "attn" / "proj", d, d, true),
                num_heads: c.num_heads,
            },
            ls1: ls("ls1"),
            norm2: layer_norm(&p / "norm2", d, 1e-6),
            mlp: Mlp::new(&p / "mlp", d, (d as f64 * c.mlp_ratio) as i64),
            ls2: ls("ls2"),
            sites: BlockSites::default(),
        }
    }

    /// Whether anything in this block trains (a filled site or a tensor requiring grad).
    pub fn trains(&self) -> bool {
        let mut own: Vec<Option<&Tensor>> = vec![self.ls1.as_ref(), self.ls2.as_ref()];
        own.extend(norm_tensors(&self.norm1));
        own.extend(norm_tensors(&self.norm2));
        for l in [
            &self.attn.qkv,
            &self.attn.proj,
            &self.mlp.fc1,
            &self.mlp.fc2,
        ] {
            own.extend(linear_tensors(l));
        }
        block_trains(&self.sites, &own)
    }

    /// `x: [batch, layout.tokens(), dim]`.
    pub fn forward_t(&self, x: &Tensor, layout: TokenLayout, train: bool) -> Tensor {
        // Inserted modules may share work between their applications in this block.
        let _block = crate::sites::BlockScope::enter();
        let s = &self.sites;
        let normed = self.norm1.forward(x);
        let mut a = self.attn.forward_t(&normed, s, train);
        if let Some(g) = &self.ls1 {
            // Not `a *= g`: out of place, a bf16 branch times the fp32 scale is fp32, as timm's
            // `x * gamma`; in place it would stay bf16.
            #[allow(clippy::assign_op_pattern)]
            {
                a = a * g;
            }
        }
        // Our own fresh branch output can take the sum in place in a frozen forward.
        let sum = if s.attn_branch.is_none() {
            residual(a, x)
        } else {
            x + apply_token(&s.attn_branch, a, layout, train)
        };
        let x = add_parallel(&s.attn_parallel, sum, x, &normed, layout, train);
        let x = apply_token(&s.after_attn, x, layout, train);

        let normed = self.norm2.forward(&x);
        let mut m = self.mlp.forward_t(&normed, &s.fc1, &s.fc2, train);
        if let Some(g) = &self.ls2 {
            #[allow(clippy::assign_op_pattern)]
            {
                m = m * g;
            }
        }
        let sum = if s.mlp_branch.is_none() {
            residual(m, &x)
        } else {
            &x + apply_token(&s.mlp_branch, m, layout, train)
        };
        let x = add_parallel(&s.mlp_parallel, sum, &x, &normed, layout, train);
        apply_token(&s.after_mlp, x, layout, train)
    }
}

/// Vision Transformer with timm's structure and names.
#[derive(Debug)]
pub struct Vit {
    pub cfg: VitConfig,
    patch_embed: nn::Conv2D,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    pub blocks: Vec<VitBlock>,
    norm: Option<nn::LayerNorm>,
    fc_norm: Option<nn::LayerNorm>,
    head: Option<nn::Linear>,
    /// Prompt-token site (visual prompt tuning).
    pub prompts: Option<Rc<dyn PromptModule>>,
}

impl Vit {
    pub fn new(p: &nn::Path, cfg: VitConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
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
        let cls_token = cfg.class_token.then(|| {
            p.var(
                "cls_token",
                &[1, 1, d],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1e-6,
                },
            )
        });
        let (gh, gw) = cfg.grid();
        let pos_embed = p.var(
            "pos_embed",
            &[1, cfg.num_prefix_tokens() + gh * gw, d],
            nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
        );
        let blocks = (0..cfg.depth)
            .map(|i| VitBlock::new(p / "blocks" / i, &cfg))
            .collect();
        let fc = cfg.use_fc_norm();
        let norm = (!fc).then(|| layer_norm(p / "norm", d, 1e-6));
        let fc_norm = fc.then(|| layer_norm(p / "fc_norm", d, 1e-6));
        let head = (cfg.num_classes > 0).then(|| linear(p / "head", d, cfg.num_classes, true));
        Ok(Self {
            cfg,
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            fc_norm,
            head,
            prompts: None,
        })
    }

    /// Checks an input batch `[batch, in_chans, H, W]` (H, W multiples of the patch size).
    pub fn check_input(&self, shape: &[i64]) -> Result<()> {
        crate::layers::check_patch_input(shape, self.cfg.in_chans, self.cfg.patch_size)
    }

    /// Position embedding for an `h x w` grid: `[1, prefix + h*w, dim]`.
    fn pos_embed_for(&self, h: i64, w: i64) -> Tensor {
        let (gh, gw) = self.cfg.grid();
        if (gh, gw) == (h, w) {
            return self.pos_embed.shallow_clone();
        }
        let np = self.cfg.num_prefix_tokens();
        let d = self.cfg.embed_dim;
        let grid = self
            .pos_embed
            .narrow(1, np, gh * gw)
            .reshape([1, gh, gw, d]);
        let grid = resample_grid_nhwc(&grid, h, w).reshape([1, h * w, d]);
        Tensor::cat(&[self.pos_embed.narrow(1, 0, np), grid], 1)
    }

    /// Patch embedding, class token and position embedding: `[batch, prefix + h*w, dim]` and
    /// the patch grid `(h, w)`.
    fn stem(&self, x: &Tensor) -> (Tensor, i64, i64) {
        let (b, _, hh, ww) = x.size4().expect("input is [batch, channels, H, W]");
        let (h, w) = (hh / self.cfg.patch_size, ww / self.cfg.patch_size);
        let mut t = self.patch_embed.forward(x).flatten(2, 3).transpose(1, 2);
        if let Some(cls) = &self.cls_token {
            t = Tensor::cat(&[cls.expand([b, -1, -1], false), t], 1);
        }
        (t + self.pos_embed_for(h, w), h, w)
    }

    /// Block `i` on tokens `t` of an `h x w` grid (whatever prefix they carry), after putting
    /// in the prompt tokens of that block, if any.
    fn block_step(&self, i: usize, t: &Tensor, h: i64, w: i64, train: bool) -> Tensor {
        let np = self.cfg.num_prefix_tokens();
        let (b, n, _) = t.size3().expect("tokens are 3-D");
        let mut layout = TokenLayout {
            prefix: n - h * w,
            h,
            w,
        };
        let prompts = self.prompts.as_ref().and_then(|m| m.prompts(i, b, train));
        match prompts {
            Some(pr) => {
                let rest = t.narrow(1, layout.prefix, h * w);
                let t = Tensor::cat(&[t.narrow(1, 0, np), pr.shallow_clone(), rest], 1);
                layout.prefix = np + pr.size()[1];
                self.blocks[i].forward_t(&t, layout, train)
            }
            None => self.blocks[i].forward_t(t, layout, train),
        }
    }

    /// The final norm, and the layout of the tokens.
    fn finish(&self, t: &Tensor, h: i64, w: i64) -> (Tensor, TokenLayout) {
        let layout = TokenLayout {
            prefix: t.size()[1] - h * w,
            h,
            w,
        };
        let t = match &self.norm {
            Some(n) => n.forward(t),
            None => t.shallow_clone(),
        };
        (t, layout)
    }

    /// Tokens after the final norm, `[batch, prefix + h*w, dim]`, and their layout (the prefix
    /// counts the class token and any prompt tokens).
    pub fn forward_tokens(&self, x: &Tensor, train: bool) -> (Tensor, TokenLayout) {
        let (mut t, h, w) = self.stem(x);
        for i in 0..self.blocks.len() {
            t = self.block_step(i, &t, h, w, train);
        }
        self.finish(&t, h, w)
    }

    /// Whether the patch embedding, class token or position embedding train.
    fn stem_trains(&self) -> bool {
        let pe = [Some(&self.patch_embed.ws), self.patch_embed.bs.as_ref()];
        pe.into_iter()
            .chain([self.cls_token.as_ref(), Some(&self.pos_embed)])
            .flatten()
            .any(|t| t.requires_grad())
    }

    /// Index of the first block with anything to train (prompts count from the block that
    /// inserts them); `blocks.len()` when none does.
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
    /// ([`checkpointed_chain`]): `loss(tokens, layout)` (tokens after the final norm) is
    /// back-propagated into every tensor that requires grad. Blocks before the first one that
    /// trains run once without autograd. Returns the loss, detached.
    pub fn forward_backward_checkpointed(
        &self,
        x: &Tensor,
        train: bool,
        loss: impl FnOnce(&Tensor, TokenLayout) -> Tensor,
    ) -> Tensor {
        let first = self.first_trained_block();
        let (t, h, w) = if first > 0 {
            tch::no_grad(|| self.stem(x))
        } else {
            self.stem(x)
        };
        checkpointed_chain(
            self.blocks.len(),
            first,
            &t,
            train,
            |i, t| self.block_step(i, t, h, w, train),
            |t| {
                let (t, layout) = self.finish(t, h, w);
                loss(&t, layout)
            },
        )
    }

    /// timm's `forward_features`: tokens after the final norm.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_tokens(x, train).0
    }

    /// Pooled features (timm's `forward_head(pre_logits=True)`).
    pub fn pool(&self, tokens: &Tensor, layout: TokenLayout) -> Tensor {
        let x = match self.cfg.global_pool {
            GlobalPool::Token => tokens.select(1, 0),
            GlobalPool::Avg => tokens
                .narrow(1, layout.prefix, layout.h * layout.w)
                .mean_dim(1, false, None),
            GlobalPool::None => tokens.shallow_clone(),
        };
        match &self.fc_norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }

    pub fn head(&self) -> Option<&nn::Linear> {
        self.head.as_ref()
    }

    /// What the methods attached to this ViT compute, for `dka export --format torch`: the
    /// sites of every block (`blocks[i]`: site name -> the module's description) and the
    /// prompt tokens, if any.
    pub fn export_sites(&self) -> Result<serde_json::Value> {
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                b.sites
                    .export()
                    .map(serde_json::Value::Object)
                    .map_err(|e| CoreError::Invalid(format!("block {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let prompts = match &self.prompts {
            Some(p) => Some(p.export().ok_or_else(|| {
                CoreError::Invalid("the prompt tokens cannot be exported for PyTorch".into())
            })?),
            None => None,
        };
        Ok(serde_json::json!({ "blocks": blocks, "prompts": prompts }))
    }

    /// Patch tokens as a feature map `[batch, dim, h, w]` (for dense heads and the ERF).
    pub fn feature_map(tokens: &Tensor, layout: TokenLayout) -> Tensor {
        let (b, _, d) = tokens.size3().expect("tokens are 3-D");
        tokens
            .narrow(1, layout.prefix, layout.h * layout.w)
            .transpose(1, 2)
            .reshape([b, d, layout.h, layout.w])
    }
}
