//! LoRA (Hu et al., ICLR 2022): `W x + (α/r)·B A x` on frozen Linear layers chosen by timm
//! name (`qkv`, `proj`, `fc1`, `fc2`); A Kaiming-uniform (a = √5), B zero. A fused `qkv` can be
//! restricted to some of its q / k / v slices (`qkv_parts = "qv"`, the paper's setting), each
//! slice with its own A and B. Adapters load from and save to peft's format: see
//! [`crate::peft`].
use dka_core::method::{selected, Method};
use dka_core::sites::{LinearDelta, LINEAR_SITES};
use dka_core::{Backbone, CoreError, Result};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::{nn, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    /// timm names of the Linear layers to adapt, a subset of `qkv`, `proj`, `fc1`, `fc2`.
    pub targets: Vec<String>,
    /// Which slices of a fused `qkv` get LoRA: any of `q`, `k`, `v` ("qkv" = the whole layer).
    pub qkv_parts: String,
    pub dropout: f64,
    pub layers: Option<Vec<usize>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            targets: vec!["qkv".into()],
            qkv_parts: "qv".into(),
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

    fn whole_qkv(&self) -> bool {
        self.slots().len() == 3
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// The state-dict path of a Linear site in block `i`.
pub fn site_path(i: usize, site: &str) -> String {
    match site {
        "qkv" | "proj" => format!("blocks.{i}.attn.{site}"),
        _ => format!("blocks.{i}.mlp.{site}"),
    }
}

/// One LoRA on one Linear: `(slot, A [r, in], B [out_slice, r])`; slot `None` = whole output.
#[derive(Debug)]
pub struct LoraDelta {
    parts: Vec<(Option<i64>, Tensor, Tensor)>,
    slice: i64,
    scale: f64,
    dropout: f64,
}

impl LinearDelta for LoraDelta {
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
        Tensor::cat(&outs, -1)
    }
}

impl Method for LoraConfig {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        self.validate()?;
        let hidden = backbone.mlp_hidden();
        let blocks =
            crate::transformer_blocks(backbone, "lora", "it adapts transformer Linear layers")?;
        for (i, (dim, sites)) in blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            for target in &self.targets {
                let (din, dout) = match target.as_str() {
                    "qkv" => (dim, 3 * dim),
                    "proj" => (dim, dim),
                    "fc1" => (dim, hidden),
                    _ => (hidden, dim),
                };
                let mut q = p.clone();
                for part in site_path(i, target).split('.') {
                    q = &q / part;
                }
                let bound = 1.0 / (din as f64).sqrt();
                let pair = |suffix: &str, out: i64| {
                    let a = (&q / format!("lora_A{suffix}")).var(
                        "weight",
                        &[self.r, din],
                        nn::Init::Uniform {
                            lo: -bound,
                            up: bound,
                        },
                    );
                    let b = (&q / format!("lora_B{suffix}")).zeros("weight", &[out, self.r]);
                    (a, b)
                };
                let parts = if target == "qkv" && !self.whole_qkv() {
                    self.slots()
                        .into_iter()
                        .map(|s| {
                            let (a, b) =
                                pair(&format!("_{}", &"qkv"[s as usize..s as usize + 1]), dim);
                            (Some(s), a, b)
                        })
                        .collect()
                } else {
                    let (a, b) = pair("", dout);
                    vec![(None, a, b)]
                };
                let delta = LoraDelta {
                    parts,
                    slice: dim,
                    scale: self.scale(),
                    dropout: self.dropout,
                };
                *sites.linear_mut(target).expect("validated target") = Some(Rc::new(delta));
            }
        }
        Ok(())
    }
}
