//! Prompt tuning, two kinds (`kind`; `auto` picks the one the backbone has a place for):
//!
//! - **tokens** — visual prompt tuning (Jia et al., ECCV 2022): `p` learnable tokens inserted
//!   after the class token, at block 0 only ("shallow") or replaced at every block ("deep");
//!   init U(−v, v) with v = sqrt(6 / (3·patch² + D)); prompt dropout 0.1. The head reads the
//!   **class token** (the DKA authors' code read a prompt token; METHODS.md lists that as a
//!   defect not to copy). On SAM's encoder (MedSAM) the tokens enter only the global-attention
//!   blocks (ViT-B: 2, 5, 8, 11), in front of the flattened map, and are dropped after each:
//!   a windowed block would show a prompt to one window at most (see `dka_core::samvit`).
//!   "Deep" gives each global block its own prompts, "shallow" only the first.
//! - **padding** — visual prompt padding (Bahng et al. 2022, "Exploring Visual Prompts for
//!   Adapting Large-Scale Models"): a learnable frame of width `p` added to the input image
//!   before the backbone (the centre stays zero): `x + [pad_up; pad_left, 0, pad_right;
//!   pad_down]`, init N(0, 1) as in their `PadPrompter`. Width 30 at 224 (their setting),
//!   scaled to the input side S: `image_size`, which must be the training input size (the
//!   frame is built for it), by default the backbone's own (SAM ViT 1024, TinyViT 256; a
//!   ResNet has none: 224). Parameters: `2·C·p·S + 2·C·(S − 2p)·p`.
//!
//! `auto`: tokens on ViT and SAM ViT; padding on ResNets and TinyViT. TinyViT has no place for
//! prompt tokens: every attention is windowed (7x7 or 14x14 windows of the map) and there is no
//! class token, so a token would reach one window at most; `kind = "tokens"` is refused there.
use dka_core::method::Method;
use dka_core::sites::{MapModule, PromptModule};
use dka_core::{Backbone, CoreError, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::{nn, Tensor};

/// Where the prompts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// Tokens on transformers with a place for them (ViT, SAM ViT), padding otherwise.
    #[default]
    Auto,
    Tokens,
    Padding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VptConfig {
    pub kind: PromptKind,
    /// Tokens: prompt tokens per block.
    pub tokens: i64,
    /// Tokens: a new set at every block (ViT) / every global block (SAM ViT).
    pub deep: bool,
    /// Tokens: dropout on the prompts.
    pub dropout: f64,
    /// Padding: frame width in pixels for a 224 x 224 input, scaled to the image size.
    pub pad: i64,
    /// Padding: side of the (square) input the frame is built for; `None` = the backbone's
    /// own input size (SAM ViT and TinyViT: their `img_size`), or 224 for a ResNet.
    pub image_size: Option<i64>,
}

impl Default for VptConfig {
    fn default() -> Self {
        Self {
            kind: PromptKind::Auto,
            tokens: 10,
            deep: true,
            dropout: 0.1,
            pad: 30,
            image_size: None,
        }
    }
}

impl VptConfig {
    /// The kind used on `backbone`.
    pub fn resolve(&self, backbone: &Backbone) -> PromptKind {
        match (self.kind, backbone) {
            (PromptKind::Auto, Backbone::Vit(_) | Backbone::SamVit(_)) => PromptKind::Tokens,
            (PromptKind::Auto, _) => PromptKind::Padding,
            (k, _) => k,
        }
    }

    /// Side of the input the padding frame is built for on `backbone`.
    pub fn image_side(&self, backbone: &Backbone) -> i64 {
        self.image_size.unwrap_or(match backbone {
            Backbone::SamVit(m) => m.cfg.img_size,
            Backbone::TinyVit(m) => m.cfg.img_size,
            Backbone::Vit(m) => m.cfg.img_size.hw().0,
            Backbone::ResNet(_) => 224,
        })
    }

    /// Frame width for an input of side `s`: `round(pad · s / 224)`.
    pub fn frame_width(&self, s: i64) -> i64 {
        ((self.pad * s) as f64 / 224.0).round() as i64
    }

    fn unsupported(&self, backbone: &Backbone, why: &str) -> CoreError {
        CoreError::Unsupported {
            method: self.name().into(),
            arch: backbone.arch().into(),
            why: why.into(),
        }
    }

    fn token_prompts(&self, layers: i64, patch: i64, d: i64, p: &nn::Path) -> Rc<Prompts> {
        let v = (6.0 / (3 * patch * patch + d) as f64).sqrt();
        let layers = if self.deep { layers } else { 1 };
        let prompts = p.var(
            "prompts",
            &[layers, self.tokens, d],
            nn::Init::Uniform { lo: -v, up: v },
        );
        Rc::new(Prompts {
            prompts,
            dropout: self.dropout,
            name: dka_core::sites::path_name(p, "prompts"),
        })
    }

    fn attach_tokens(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        if self.tokens < 1 {
            return Err(CoreError::Invalid(
                "vpt needs at least one prompt token".into(),
            ));
        }
        match backbone {
            Backbone::Vit(m) => {
                if !m.cfg.class_token {
                    return Err(CoreError::Invalid(
                        "vpt tokens need a ViT with a class token".into(),
                    ));
                }
                m.prompts =
                    Some(self.token_prompts(m.cfg.depth, m.cfg.patch_size, m.cfg.embed_dim, p));
                Ok(())
            }
            Backbone::SamVit(m) => {
                let global = m.cfg.global_attn_indexes.len() as i64;
                if global == 0 {
                    return Err(CoreError::Invalid(
                        "vpt tokens on a SAM encoder need a global-attention block".into(),
                    ));
                }
                m.prompts = Some(self.token_prompts(global, m.cfg.patch_size, m.cfg.embed_dim, p));
                Ok(())
            }
            Backbone::TinyVit(_) => Err(self.unsupported(
                backbone,
                "every TinyViT attention is windowed and there is no class token, so a prompt \
                 token would reach one window at most; use kind = \"padding\"",
            )),
            Backbone::ResNet(_) => {
                Err(self.unsupported(backbone, "a CNN has no tokens; use kind = \"padding\""))
            }
        }
    }

    fn attach_padding(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        let s = self.image_side(backbone);
        let w = self.frame_width(s);
        if w < 1 || 2 * w >= s {
            return Err(CoreError::Invalid(format!(
                "vpt padding: frame width {w} (pad {} at 224, image side {s}) must be at least 1 \
                 and leave a centre",
                self.pad
            )));
        }
        let c = match &*backbone {
            Backbone::ResNet(m) => m.cfg.in_chans,
            Backbone::SamVit(m) => m.cfg.in_chans,
            Backbone::TinyVit(m) => m.cfg.in_chans,
            Backbone::Vit(_) => 0,
        };
        let Some(site) = backbone.input_site_mut() else {
            return Err(self.unsupported(
                backbone,
                "this ViT has no input site for padding prompts; use kind = \"tokens\"",
            ));
        };
        let n = |name: &str, shape: &[i64]| {
            p.var(
                name,
                shape,
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        };
        *site = Some(Rc::new(PadPrompter {
            pad_up: n("pad_up", &[1, c, w, s]),
            pad_down: n("pad_down", &[1, c, w, s]),
            pad_left: n("pad_left", &[1, c, s - 2 * w, w]),
            pad_right: n("pad_right", &[1, c, s - 2 * w, w]),
            size: s,
        }));
        Ok(())
    }
}

#[derive(Debug)]
struct Prompts {
    /// `[layers, p, D]`: row 0 for block 0, rows 1.. for the deep blocks.
    prompts: Tensor,
    dropout: f64,
    /// The tensor's name, for export.
    name: String,
}

impl PromptModule for Prompts {
    /// The `[layers, p, D]` tensor's name: row k goes in at block k (row 0 after the class
    /// token, later rows replace the previous prompts).
    fn export(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "kind": "prompts", "name": self.name }))
    }

    fn count(&self) -> i64 {
        self.prompts.size()[1]
    }

    /// Dropout draws its mask per sample (as in VPT's code, where the prompts are expanded to
    /// the batch before `prompt_dropout`).
    fn prompts(&self, layer: usize, batch: i64, train: bool) -> Option<Tensor> {
        ((layer as i64) < self.prompts.size()[0]).then(|| {
            self.prompts
                .get(layer as i64)
                .unsqueeze(0)
                .expand([batch, -1, -1], false)
                .dropout(self.dropout, train)
        })
    }
}

/// Bahng et al.'s `PadPrompter`: a learnable frame added to `[batch, C, S, S]` images.
#[derive(Debug)]
struct PadPrompter {
    pad_up: Tensor,
    pad_down: Tensor,
    pad_left: Tensor,
    pad_right: Tensor,
    size: i64,
}

impl MapModule for PadPrompter {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let (_, c, h, w) = x.size4().expect("images are [batch, C, H, W]");
        assert!(
            h == self.size && w == self.size,
            "vpt padding was built for {0}x{0} inputs, got {h}x{w}: set vpt.image_size to the input size",
            self.size
        );
        let inner = self.pad_left.size()[2];
        let base = Tensor::zeros([1, c, inner, inner], (x.kind(), x.device()));
        let mid = Tensor::cat(&[&self.pad_left, &base, &self.pad_right], 3);
        x + Tensor::cat(&[&self.pad_up, &mid, &self.pad_down], 2)
    }
}

impl Method for VptConfig {
    fn name(&self) -> &'static str {
        match (self.kind, self.deep) {
            (PromptKind::Padding, _) => "vpt-padding",
            (_, true) => "vpt-deep",
            (_, false) => "vpt-shallow",
        }
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        match self.resolve(backbone) {
            PromptKind::Padding => self.attach_padding(backbone, p),
            _ => self.attach_tokens(backbone, p),
        }
    }
}
