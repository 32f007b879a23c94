//! LoRA (Hu et al., ICLR 2022): `W x + (α/r)·B A x` on frozen layers, A Kaiming-uniform
//! (a = √5), B zero, so the model starts as the backbone.
//!
//! - Transformers (ViT, SAM ViT, TinyViT): Linear layers chosen by timm name (`qkv`, `proj`,
//!   `fc1`, `fc2`); a fused `qkv` can be restricted to some of its q / k / v slices
//!   (`qkv_parts = "qv"`, the paper's setting), each slice with its own A and B. TinyViT orders
//!   its `qkv` rows per head; the slices are put where that layout keeps q, k and v.
//! - ResNets: convolutions of the residual blocks (`conv_targets`), as peft's `lora.Conv2d`:
//!   A is a conv `c_in -> r` with the layer's kernel, stride and padding, B a 1x1 conv
//!   `r -> c_out`, added to the conv's output before its BatchNorm. peft has no default for
//!   convs (its `target_modules` must name them); ours is `conv2`, the 3x3 conv of every
//!   bottleneck (the second 3x3 of a basic block). `layers` then selects stages.
//!
//! Adapters load from and save to peft's format: see [`crate::peft`].
use dka_core::method::{selected, Method};
use dka_core::sites::{ConvDelta, ConvSpec, LinearDelta, QkvLayout, LINEAR_SITES};
use dka_core::{Backbone, CoreError, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::{nn, Tensor};

/// A convolution of a ResNet residual block (timm's name inside `layerK.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvTarget {
    Conv1,
    Conv2,
    Conv3,
}

impl ConvTarget {
    pub const ALL: [ConvTarget; 3] = [ConvTarget::Conv1, ConvTarget::Conv2, ConvTarget::Conv3];

    pub fn name(self) -> &'static str {
        match self {
            ConvTarget::Conv1 => "conv1",
            ConvTarget::Conv2 => "conv2",
            ConvTarget::Conv3 => "conv3",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Position in [`dka_core::sites::MapSites::convs`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    /// Transformers: timm names of the Linear layers to adapt, a subset of `qkv`, `proj`,
    /// `fc1`, `fc2`.
    pub targets: Vec<String>,
    /// Which slices of a fused `qkv` get LoRA: any of `q`, `k`, `v` ("qkv" = the whole layer).
    pub qkv_parts: String,
    /// ResNets: the convolutions of each residual block to adapt.
    pub conv_targets: Vec<ConvTarget>,
    pub dropout: f64,
    /// Blocks (transformers) or stages (ResNets) that get LoRA; `None` = all.
    pub layers: Option<Vec<usize>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            targets: vec!["qkv".into()],
            qkv_parts: "qv".into(),
            conv_targets: vec![ConvTarget::Conv2],
            dropout: 0.0,
            layers: None,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r < 1 {
            return Err(CoreError::Invalid(format!(
                "lora.r = {} must be at least 1",
                self.r
            )));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !LINEAR_SITES.contains(&t.as_str()))
        {
            return Err(CoreError::Invalid(format!(
                "lora target '{t}' is not one of {LINEAR_SITES:?}"
            )));
        }
        let parts = self.slots();
        if parts.is_empty() || parts.len() != self.qkv_parts.len() {
            return Err(CoreError::Invalid(format!(
                "lora.qkv_parts '{}' must be distinct letters of \"qkv\"",
                self.qkv_parts
            )));
        }
        Ok(())
    }

    /// Output slices of `qkv` that get LoRA: 0 = q, 1 = k, 2 = v.
    pub fn slots(&self) -> Vec<i64> {
        let mut s: Vec<i64> = self
            .qkv_parts
            .chars()
            .filter_map(|c| "qkv".find(c).map(|i| i as i64))
            .collect();
        s.sort();
        s.dedup();
        s
    }

    pub fn whole_qkv(&self) -> bool {
        self.slots().len() == 3
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    fn attach_convs(&self, m: &mut dka_core::resnet::ResNet, p: &nn::Path) -> Result<()> {
        if self.conv_targets.is_empty() {
            return Err(CoreError::Invalid(
                "lora.conv_targets is empty: a ResNet needs at least one conv to adapt".into(),
            ));
        }
        for (k, i, blk) in m.blocks_mut(&self.layers) {
            for &t in &self.conv_targets {
                let Some(&spec) = blk.conv_specs.get(t.index()) else {
                    return Err(CoreError::Invalid(format!(
                        "lora conv target {}: layer{}.{i} has only {} convs",
                        t.name(),
                        k + 1,
                        blk.conv_specs.len()
                    )));
                };
                let q = p / format!("layer{}", k + 1) / i / t.name();
                let delta = ConvLora::new(&q, spec, self);
                blk.sites.convs[t.index()] = Some(Rc::new(delta));
            }
        }
        Ok(())
    }
}

/// The state-dict path of a Linear site inside block `block` (`blocks.3`, `layers.1.blocks.0`).
pub fn site_path(block: &str, site: &str) -> String {
    match site {
        "qkv" | "proj" => format!("{block}.attn.{site}"),
        _ => format!("{block}.mlp.{site}"),
    }
}

/// `lora_A` `[r, in]` (Kaiming-uniform, a = √5) and `lora_B` `[out, r]` (zero) under `q`.
fn pair(q: &nn::Path, suffix: &str, r: i64, din: i64, dout: i64) -> (Tensor, Tensor) {
    let bound = 1.0 / (din as f64).sqrt();
    let a = (q / format!("lora_A{suffix}")).var(
        "weight",
        &[r, din],
        nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    );
    let b = (q / format!("lora_B{suffix}")).zeros("weight", &[dout, r]);
    (a, b)
}

/// One LoRA on one Linear: `(slot, A [r, in], B [out_slice, r])`; slot `None` = whole output.
/// The delta comes in the layer's own output order (`layout` places q/k/v slices).
#[derive(Debug)]
pub struct LoraDelta {
    parts: Vec<(Option<i64>, Tensor, Tensor)>,
    /// The names of each part's A and B (for export), in `parts`' order.
    names: Vec<(String, String)>,
    slice: i64,
    scale: f64,
    dropout: f64,
    layout: QkvLayout,
}

impl LinearDelta for LoraDelta {
    /// Each part's slot (`0`, `1`, `2` for q, k, v of a fused `qkv`; `null` for the whole
    /// output) with the names of its A and B, the scale `alpha / r` and the slice width.
    fn export(&self) -> Option<serde_json::Value> {
        if self.layout != QkvLayout::Grouped {
            return None;
        }
        let parts: Vec<serde_json::Value> = self
            .parts
            .iter()
            .zip(&self.names)
            .map(|((slot, _, _), (a, b))| serde_json::json!({ "slot": slot, "a": a, "b": b }))
            .collect();
        Some(serde_json::json!({
            "kind": "lora",
            "parts": parts,
            "scale": self.scale,
            "slice": self.slice,
        }))
    }

    fn delta(&self, input: &Tensor, train: bool) -> Tensor {
        let x = input.dropout(self.dropout, train);
        let low = |a: &Tensor, b: &Tensor| x.matmul(&a.tr()).matmul(&b.tr()) * self.scale;
        if let [(None, a, b)] = self.parts.as_slice() {
            return low(a, b);
        }
        let mut outs: Vec<Tensor> = Vec::with_capacity(3);
        for slot in 0..3 {
            match self.parts.iter().find(|(s, _, _)| *s == Some(slot)) {
                Some((_, a, b)) => outs.push(low(a, b)),
                None => {
                    let mut shape = x.size();
                    *shape.last_mut().unwrap() = self.slice;
                    outs.push(Tensor::zeros(shape.as_slice(), (x.kind(), x.device())));
                }
            }
        }
        self.layout.from_grouped(&Tensor::cat(&outs, -1))
    }
}

/// peft's `lora.Conv2d`: `(α/r)·B(A(x))`, A `[r, c_in, k, k]` with the layer's stride and
/// padding, B `[c_out, r, 1, 1]`.
#[derive(Debug)]
pub struct ConvLora {
    a: Tensor,
    b: Tensor,
    stride: i64,
    padding: i64,
    scale: f64,
    dropout: f64,
}

impl ConvLora {
    fn new(q: &nn::Path, spec: ConvSpec, cfg: &LoraConfig) -> Self {
        let fan_in = spec.c_in * spec.kernel * spec.kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let a = (q / "lora_A").var(
            "weight",
            &[cfg.r, spec.c_in, spec.kernel, spec.kernel],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let b = (q / "lora_B").zeros("weight", &[spec.c_out, cfg.r, 1, 1]);
        Self {
            a,
            b,
            stride: spec.stride,
            padding: spec.padding,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        }
    }
}

impl ConvDelta for ConvLora {
    fn delta(&self, input: &Tensor, train: bool) -> Tensor {
        let (s, p) = (self.stride, self.padding);
        let low = input.dropout(self.dropout, train).conv2d(
            &self.a,
            None::<&Tensor>,
            [s, s],
            [p, p],
            [1, 1],
            1,
        );
        low.conv2d(&self.b, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1) * self.scale
    }
}

impl Method for LoraConfig {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        self.validate()?;
        if let Backbone::ResNet(m) = backbone {
            return self.attach_convs(m, p);
        }
        if self.targets.is_empty() {
            return Err(CoreError::Invalid(
                "lora.targets is empty: a transformer needs at least one Linear to adapt".into(),
            ));
        }
        let info = backbone.token_blocks();
        let blocks =
            crate::transformer_blocks(backbone, "lora", "it adapts Linear or conv layers")?;
        for ((i, (dim, sites)), info) in blocks.into_iter().enumerate().zip(info) {
            if !selected(&self.layers, i) {
                continue;
            }
            let hidden = info.mlp_hidden;
            for target in &self.targets {
                let (din, dout) = match target.as_str() {
                    "qkv" => (dim, 3 * dim),
                    "proj" => (dim, dim),
                    "fc1" => (dim, hidden),
                    _ => (hidden, dim),
                };
                let mut q = p.clone();
                for part in site_path(&info.path, target).split('.') {
                    q = &q / part;
                }
                let suffixes: Vec<(Option<i64>, String)> = if target == "qkv" && !self.whole_qkv() {
                    self.slots()
                        .into_iter()
                        .map(|s| (Some(s), format!("_{}", &"qkv"[s as usize..s as usize + 1])))
                        .collect()
                } else {
                    vec![(None, String::new())]
                };
                let parts = suffixes
                    .iter()
                    .map(|(s, suffix)| {
                        let out = if s.is_some() { dim } else { dout };
                        let (a, b) = pair(&q, suffix, self.r, din, out);
                        (*s, a, b)
                    })
                    .collect();
                let names = suffixes
                    .iter()
                    .map(|(_, suffix)| {
                        (
                            dka_core::sites::path_name(&q, &format!("lora_A{suffix}.weight")),
                            dka_core::sites::path_name(&q, &format!("lora_B{suffix}.weight")),
                        )
                    })
                    .collect();
                let delta = LoraDelta {
                    parts,
                    names,
                    slice: dim,
                    scale: self.scale(),
                    dropout: self.dropout,
                    layout: if target == "qkv" {
                        info.qkv
                    } else {
                        QkvLayout::Grouped
                    },
                };
                *sites.linear_mut(target).expect("validated target") = Some(Rc::new(delta));
            }
        }
        Ok(())
    }
}
