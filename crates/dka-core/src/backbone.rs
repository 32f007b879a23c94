//! One handle over the backbones: built from a preset name or a JSON config, with timm's
//! `forward_features` / `forward_head` split.
use crate::error::{CoreError, Result};
use crate::resnet::{ResNet, ResNetConfig};
use crate::samvit::{SamVit, SamVitConfig};
use crate::sites::{BlockSites, QkvLayout, TokenBlockInfo, TokenLayout};
use crate::tinyvit::{TinyVit, TinyVitConfig};
use crate::vit::{Vit, VitConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::Tensor;

/// A backbone's configuration. In JSON the field `arch` (`vit`, `resnet`, `samvit`, `tinyvit`)
/// picks the family (absent means `vit`); the other fields are timm's (or, for TinyViT, the
/// reference module's) constructor arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum BackboneConfig {
    Vit(VitConfig),
    ResNet(ResNetConfig),
    SamVit(SamVitConfig),
    TinyVit(TinyVitConfig),
}

pub const PRESETS: [&str; 10] = [
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "samvit_base_patch16",
    "medsam_vit_b",
    "litemedsam_tinyvit",
];

impl BackboneConfig {
    pub fn preset(name: &str) -> Option<Self> {
        VitConfig::preset(name)
            .map(Self::Vit)
            .or_else(|| ResNetConfig::preset(name).map(Self::ResNet))
            .or_else(|| SamVitConfig::preset(name).map(Self::SamVit))
            .or_else(|| TinyVitConfig::preset(name).map(Self::TinyVit))
    }

    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(obj) = v.as_object_mut() {
            obj.entry("arch").or_insert_with(|| "vit".into());
            // The checkpoint's preprocessing (`crate::input`), not an architecture field.
            obj.remove("input");
        }
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// A preset name, or the path of a JSON config file.
    pub fn from_spec(spec: &str) -> Result<Self> {
        if let Some(c) = Self::preset(spec) {
            return Ok(c);
        }
        let path = Path::new(spec);
        if !path.exists() {
            let known = PRESETS.join(", ");
            return Err(CoreError::UnknownPreset {
                name: spec.into(),
                known: format!("{known}; or a JSON config file"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|err| CoreError::Io {
            path: path.into(),
            err,
        })?;
        Self::from_json_str(&text).map_err(|message| CoreError::Config {
            path: path.into(),
            message,
        })
    }

    pub fn num_classes(&self) -> i64 {
        match self {
            Self::Vit(c) => c.num_classes,
            Self::ResNet(c) => c.num_classes,
            Self::SamVit(c) => c.num_classes,
            Self::TinyVit(c) => c.num_classes,
        }
    }

    pub fn set_num_classes(&mut self, n: i64) {
        match self {
            Self::Vit(c) => c.num_classes = n,
            Self::ResNet(c) => c.num_classes = n,
            Self::SamVit(c) => c.num_classes = n,
            Self::TinyVit(c) => c.num_classes = n,
        }
    }

    /// State-dict prefix of the classification head (the one part allowed to differ from a
    /// checkpoint).
    pub fn head_prefix(&self) -> &'static str {
        match self {
            Self::Vit(_) => "head.",
            Self::ResNet(_) => "fc.",
            Self::SamVit(_) => "head.fc.",
            Self::TinyVit(_) => "head.",
        }
    }
}

/// What `forward_features` returns: the tensor, and for token forms their layout.
#[derive(Debug)]
pub struct Features {
    pub x: Tensor,
    pub layout: Option<TokenLayout>,
}

#[derive(Debug)]
pub enum Backbone {
    Vit(Vit),
    ResNet(ResNet),
    SamVit(SamVit),
    TinyVit(TinyVit),
}

impl Backbone {
    pub fn new(p: &nn::Path, cfg: &BackboneConfig) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::Vit(c) => Self::Vit(Vit::new(p, c.clone())?),
            BackboneConfig::ResNet(c) => Self::ResNet(ResNet::new(p, c.clone())?),
            BackboneConfig::SamVit(c) => Self::SamVit(SamVit::new(p, c.clone())?),
            BackboneConfig::TinyVit(c) => Self::TinyVit(TinyVit::new(p, c.clone())?),
        })
    }

    pub fn check_input(&self, shape: &[i64]) -> Result<()> {
        match self {
            Self::Vit(m) => m.check_input(shape),
            Self::ResNet(m) => m.check_input(shape),
            Self::SamVit(m) => m.check_input(shape),
            Self::TinyVit(m) => m.check_input(shape),
        }
    }

    pub fn forward_features(&self, x: &Tensor, train: bool) -> Features {
        match self {
            Self::Vit(m) => {
                let (x, layout) = m.forward_tokens(x, train);
                Features {
                    x,
                    layout: Some(layout),
                }
            }
            Self::ResNet(m) => Features {
                x: m.forward_features(x, train),
                layout: None,
            },
            Self::SamVit(m) => Features {
                x: m.forward_features(x, train),
                layout: None,
            },
            Self::TinyVit(m) => Features {
                x: m.forward_features(x, train),
                layout: None,
            },
        }
    }

    /// Whether the backbone has a frozen stem: leading layers with no insertion site and no
    /// trained weight, whose output depends only on the image, so that a trainer without
    /// augmentation may compute it once per training image ([`Self::stem`],
    /// [`Self::forward_from_stem`]). TinyViT's stem is its patch embedding, MbConv stage and
    /// first downsampling (LiteMedSAM: the 64-channel stage at the input's full resolution,
    /// a sixth of a step's work at 48 x 48); the other backbones report none (their stems are
    /// one patch-embedding or stem convolution).
    pub fn has_frozen_stem(&self) -> bool {
        match self {
            Self::TinyVit(m) => m.stem_is_frozen(),
            _ => false,
        }
    }

    /// The frozen stem's output (see [`Self::has_frozen_stem`]); `None` without one.
    pub fn stem(&self, x: &Tensor) -> Option<Tensor> {
        match self {
            Self::TinyVit(m) if m.stem_is_frozen() => Some(m.stem(x, false)),
            _ => None,
        }
    }

    /// The features from the frozen stem's output: `forward_features(x)` equals
    /// `forward_from_stem(stem(x))`.
    pub fn forward_from_stem(&self, s: &Tensor, train: bool) -> Features {
        match self {
            Self::TinyVit(m) => Features {
                x: m.forward_from_stem(s, train),
                layout: None,
            },
            _ => panic!("forward_from_stem: this backbone has no frozen stem"),
        }
    }

    /// One training step's forward and backward: `loss(features)` is back-propagated into
    /// every tensor that requires grad; returns the loss, detached. With `checkpoint_blocks`,
    /// ViT and SAM ViT keep only each block's input during the forward and recompute the
    /// block's activations during the backward (activation checkpointing: one more forward of
    /// the blocks for a fraction of the memory, e.g. MedSAM's 1024 x 1024 input; see
    /// [`crate::layers::checkpointed_chain`]); ResNet and TinyViT run the plain step.
    pub fn forward_backward(
        &self,
        x: &Tensor,
        train: bool,
        checkpoint_blocks: bool,
        loss: impl FnOnce(&Features) -> Tensor,
    ) -> Tensor {
        match self {
            Self::Vit(m) if checkpoint_blocks => {
                m.forward_backward_checkpointed(x, train, |t, layout| {
                    loss(&Features {
                        x: t.shallow_clone(),
                        layout: Some(layout),
                    })
                })
            }
            Self::SamVit(m) if checkpoint_blocks => {
                m.forward_backward_checkpointed(x, train, |f| {
                    loss(&Features {
                        x: f.shallow_clone(),
                        layout: None,
                    })
                })
            }
            _ => {
                let l = loss(&self.forward_features(x, train));
                l.backward();
                l.detach()
            }
        }
    }

    /// Pooled features `[batch, num_features]` (timm's `forward_head(pre_logits=True)`).
    pub fn pool(&self, f: &Features) -> Tensor {
        match self {
            Self::Vit(m) => m.pool(&f.x, f.layout.expect("ViT features carry their layout")),
            Self::ResNet(m) => m.pool(&f.x),
            Self::SamVit(m) => m.pool(&f.x),
            Self::TinyVit(m) => m.pool(&f.x),
        }
    }

    /// The classifier head of the checkpoint, if the model has one.
    pub fn head(&self) -> Option<&nn::Linear> {
        match self {
            Self::Vit(m) => m.head(),
            Self::ResNet(m) => m.head(),
            Self::SamVit(m) => m.head(),
            Self::TinyVit(m) => m.head(),
        }
    }

    /// timm's `forward_head`: logits, or `None` for a model without a head.
    pub fn forward_head(&self, f: &Features) -> Option<Tensor> {
        self.head().map(|h| h.forward(&self.pool(f)))
    }

    /// What the attached method computes, block by block, for `dka export --format torch`
    /// (see [`crate::vit::Vit::export_sites`]). ViT only so far.
    pub fn export_sites(&self) -> Result<serde_json::Value> {
        match self {
            Self::Vit(m) => m.export_sites(),
            other => Err(CoreError::Invalid(format!(
                "PyTorch export (--format torch) covers ViT backbones (timm's VisionTransformer) \
                 so far, not {}; the run's adapter folder loads in dka (`dka features --adapter`)",
                other.arch()
            ))),
        }
    }

    /// Family name for messages (`vit`, `resnet`, `samvit`, `tinyvit`).
    pub fn arch(&self) -> &'static str {
        match self {
            Self::Vit(_) => "vit",
            Self::ResNet(_) => "resnet",
            Self::SamVit(_) => "samvit",
            Self::TinyVit(_) => "tinyvit",
        }
    }

    /// The sites of every transformer block with the block's width; empty for a CNN. TinyViT:
    /// the blocks of stages 1.. (stage 0 is MBConv), widths per stage.
    pub fn token_blocks_mut(&mut self) -> Vec<(i64, &mut BlockSites)> {
        match self {
            Self::Vit(m) => {
                let d = m.cfg.embed_dim;
                m.blocks.iter_mut().map(|b| (d, &mut b.sites)).collect()
            }
            Self::SamVit(m) => {
                let d = m.cfg.embed_dim;
                m.blocks.iter_mut().map(|b| (d, &mut b.sites)).collect()
            }
            Self::TinyVit(m) => m
                .blocks_mut()
                .into_iter()
                .map(|b| (b.dim, &mut b.sites))
                .collect(),
            Self::ResNet(_) => Vec::new(),
        }
    }

    /// Path, width, MLP width and qkv row order of every transformer block, in
    /// [`Self::token_blocks_mut`] order; empty for a CNN.
    pub fn token_blocks(&self) -> Vec<TokenBlockInfo> {
        let uniform = |prefix: &str, n: usize, dim: i64, ratio: f64| {
            (0..n)
                .map(|i| TokenBlockInfo {
                    path: format!("{prefix}{i}"),
                    dim,
                    mlp_hidden: (dim as f64 * ratio) as i64,
                    qkv: QkvLayout::Grouped,
                })
                .collect()
        };
        match self {
            Self::Vit(m) => uniform("blocks.", m.blocks.len(), m.cfg.embed_dim, m.cfg.mlp_ratio),
            Self::SamVit(m) => uniform("blocks.", m.blocks.len(), m.cfg.embed_dim, m.cfg.mlp_ratio),
            Self::TinyVit(m) => m.block_info(),
            Self::ResNet(_) => Vec::new(),
        }
    }

    /// Hidden width of the transformer MLPs (0 for a CNN). TinyViT's differ per stage: this is
    /// its first transformer stage's; [`Self::token_blocks`] has every block's.
    pub fn mlp_hidden(&self) -> i64 {
        self.token_blocks().first().map_or(0, |b| b.mlp_hidden)
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> i64 {
        match self {
            Self::Vit(m) => m.cfg.embed_dim,
            Self::ResNet(m) => m.cfg.num_features(),
            Self::SamVit(m) => m.cfg.neck_chans,
            Self::TinyVit(m) => m.cfg.neck_chans,
        }
    }

    /// Sets whether BatchNorm layers use running statistics in training mode (a frozen
    /// backbone: yes; full fine-tuning: no). No-op for backbones without BatchNorm.
    pub fn set_freeze_bn(&mut self, freeze: bool) {
        match self {
            Self::ResNet(m) => m.freeze_bn = freeze,
            Self::TinyVit(m) => m.freeze_bn = freeze,
            Self::Vit(_) | Self::SamVit(_) => {}
        }
    }

    /// The input site (maps the image batch before the stem), where the backbone has one
    /// (ResNet, SAM ViT, TinyViT; the plain ViT has prompt tokens instead).
    pub fn input_site_mut(
        &mut self,
    ) -> Option<&mut Option<std::rc::Rc<dyn crate::sites::MapModule>>> {
        match self {
            Self::ResNet(m) => Some(&mut m.input_prompt),
            Self::SamVit(m) => Some(&mut m.input_prompt),
            Self::TinyVit(m) => Some(&mut m.input_prompt),
            Self::Vit(_) => None,
        }
    }
}
