//! The Dual-Kernel Adapter (DKA, ICLR 2026):
//! `f(x) = x + Up(σ(DWConv_L(Down x) + DWConv_S(Down x)))`.
//!
//! Token form (ViT, SAM ViT): the prefix tokens (CLS, prompts) skip the convolutions; the patch
//! tokens are laid out on the model's `h x w` grid (non-square grids work). Map form (ResNet):
//! the same module with `Down`/`Up` as 1x1 convs (they share the Linear's weights), after the
//! residual blocks of the selected stages. Every paper-vs-authors difference is a field of
//! [`DkaConfig`]; `DkaConfig::authors()` (the default) reproduces the paper's tables,
//! `DkaConfig::paper()` follows the paper's equation.
mod dwconv;
mod paths;
mod tune;

pub use dwconv::{radial_mask, ConvPath, Kernels, LearnableRadius};
pub use paths::{
    channels_last, direct_depthwise, fft_depthwise, fft_size, fit_kernel, toeplitz_fits,
};
pub use tune::{measure_paths, tuned_choices, PathTime};

use crate::backbone::Backbone;
use crate::error::{CoreError, Result};
use crate::method::{selected, Method};
use crate::sites::{MapModule, TokenLayout, TokenModule};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, Module};
use tch::Tensor;

/// Which depthwise branches exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branches {
    Both,
    Large,
    Small,
}

/// Where the GELUs sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The paper's equation: one GELU after the convolutions.
    Paper,
    /// The authors' code: a GELU right after `Down` as well.
    Authors,
}

/// Where DKA sits in a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// `x = x + Attn(LN1 x); x = DKA(x); x = x + MLP(LN2 x); x = DKA(x)`, one instance shared
    /// by both positions (the authors' code).
    Mona,
    /// Inside each residual branch: `x = x + DKA(Attn(LN1 x))`, likewise for the MLP (two
    /// instances).
    Branch,
    /// After the block.
    Block,
}

/// Initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Linear weights normal(std 0.01) (timm's `trunc_normal_(std=.01)` truncates at ±2, i.e.
    /// not at all at this std), convs Kaiming-normal (fan_out), biases zero.
    Authors,
    /// As `authors`, but `Up` starts at zero: the adapted model starts as the backbone.
    ZeroUp,
}

/// The learnable-kernel-size variant (Table 3b; the paper gives no recipe, this is ours):
/// one `k_max x k_max` kernel per channel times `sigmoid((ρ_c − r)/τ)`, `r` the tap's
/// distance from the centre, `ρ_c` learned per channel.
///
/// The radius is trained in half-kernel units: the stored tensor is `radius_theta` (`θ_c`,
/// zero at start) and `ρ_c = init_radius + (k_max/2) · θ_c` ([`LearnableKernel::radius_scale`]),
/// so that Adam's steps of about one learning rate move `ρ` by `k_max/2 · lr` pixels (0.0255
/// px per step for 51 at 1e-3) rather than `lr` pixels. Adapters saved with the earlier
/// pixel-valued `radius` tensor fail to load (missing `radius_theta`, unused `radius`)
/// instead of being misread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnableKernel {
    pub k_max: i64,
    pub tau: f64,
    pub init_radius: f64,
}

impl LearnableKernel {
    /// Pixels of radius per unit of `radius_theta`: `k_max / 2`.
    pub fn radius_scale(&self) -> f64 {
        self.k_max as f64 / 2.0
    }
}

/// Name of the stored radius parameter of a learnable kernel (`<module>.radius_theta`).
pub const RADIUS_THETA: &str = "radius_theta";

/// The learned radii (pixels) of every DKA module in an adapter store, sorted by module name:
/// `(module, radius per channel)`, e.g. `("blocks.0.dka", [12.3, 11.8, …])`. Empty unless
/// `cfg` has learnable kernels. Their starting value is `cfg.learnable_kernel.init_radius`.
pub fn learned_radii(vs: &nn::VarStore, cfg: &DkaConfig) -> Vec<(String, Vec<f64>)> {
    let Some(l) = &cfg.learnable_kernel else {
        return Vec::new();
    };
    let suffix = format!(".{RADIUS_THETA}");
    let mut out: Vec<(String, Vec<f64>)> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, theta)| {
            let module = name.strip_suffix(&suffix)?.to_string();
            let rho = (theta.detach().to_kind(tch::Kind::Double) * l.radius_scale()
                + l.init_radius)
                .to_device(tch::Device::Cpu);
            Some((
                module,
                Vec::<f64>::try_from(&rho).expect("a 1-D radius tensor"),
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkaConfig {
    /// Middle dimension d̂ (paper: 16 for classification, 192 for segmentation).
    pub d_hat: i64,
    pub large_kernel: i64,
    pub small_kernel: i64,
    pub branches: Branches,
    /// Replaces both fixed kernels when set.
    pub learnable_kernel: Option<LearnableKernel>,
    pub activation: Activation,
    /// Dropout before `Up`.
    pub dropout: f64,
    /// Biases in Down, Up and the convs.
    pub bias: bool,
    pub placement: Placement,
    /// Blocks (ViT) or stages (ResNet, 0-based) that get an adapter; `None` = all.
    pub layers: Option<Vec<usize>>,
    pub init: Init,
    pub conv_path: ConvPath,
}

impl Default for DkaConfig {
    fn default() -> Self {
        Self::authors()
    }
}

impl DkaConfig {
    /// The authors' released variant (it produced the paper's ViT numbers).
    pub fn authors() -> Self {
        Self {
            d_hat: 16,
            large_kernel: 51,
            small_kernel: 5,
            branches: Branches::Both,
            learnable_kernel: None,
            activation: Activation::Authors,
            dropout: 0.1,
            bias: false,
            placement: Placement::Mona,
            layers: None,
            init: Init::Authors,
            conv_path: ConvPath::Auto,
        }
    }

    /// The paper's equation: one GELU, no dropout, biases. Only what the equation decides
    /// changes; where the module sits (`placement`, the authors' `mona` by default) is a
    /// separate choice the equation does not make.
    pub fn paper() -> Self {
        Self {
            activation: Activation::Paper,
            dropout: 0.0,
            bias: true,
            ..Self::authors()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let odd = |k: i64| k >= 1 && k % 2 == 1;
        if self.d_hat < 1 {
            return Err(CoreError::Invalid(format!(
                "dka.d_hat = {} must be at least 1",
                self.d_hat
            )));
        }
        if !odd(self.large_kernel) || !odd(self.small_kernel) {
            return Err(CoreError::Invalid(format!(
                "dka kernel sizes must be odd and positive (large {}, small {})",
                self.large_kernel, self.small_kernel
            )));
        }
        if let Some(l) = &self.learnable_kernel {
            if !odd(l.k_max) || l.tau <= 0.0 {
                return Err(CoreError::Invalid(format!(
                    "dka.learnable_kernel: k_max {} must be odd, tau {} positive",
                    l.k_max, l.tau
                )));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(CoreError::Invalid(format!(
                "dka.dropout = {} must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Trainable parameters of one module on `dim` channels: Down + Up + kernels (+ biases).
    pub fn params_per_module(&self, dim: i64) -> i64 {
        let d = self.d_hat;
        let b = i64::from(self.bias);
        let proj = 2 * dim * d + b * (d + dim);
        let convs = match (&self.learnable_kernel, self.branches) {
            (Some(l), _) => d * l.k_max * l.k_max + d + b * d,
            (None, Branches::Both) => {
                d * (self.large_kernel.pow(2) + self.small_kernel.pow(2)) + 2 * b * d
            }
            (None, Branches::Large) => d * self.large_kernel.pow(2) + b * d,
            (None, Branches::Small) => d * self.small_kernel.pow(2) + b * d,
        };
        proj + convs
    }
}

/// One DKA module on `dim` channels.
#[derive(Debug)]
pub struct Dka {
    down: nn::Linear,
    up: nn::Linear,
    kernels: Kernels,
    activation: Activation,
    dropout: f64,
    path: ConvPath,
    /// Where its tensors are (`blocks.0.dka`), for export.
    prefix: String,
}

impl Dka {
    pub fn new(p: &nn::Path, dim: i64, c: &DkaConfig) -> Result<Self> {
        c.validate()?;
        let d = c.d_hat;
        let lin = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            bs_init: c.bias.then_some(nn::Init::Const(0.0)),
            bias: c.bias,
        };
        let down = nn::linear(p / "down", dim, d, lin);
        let up_init = match c.init {
            Init::Authors => lin,
            Init::ZeroUp => nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                ..lin
            },
        };
        let up = nn::linear(p / "up", d, dim, up_init);
        let kaiming = nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        let conv = |name: &str, k: i64| {
            let q = p / name;
            (
                q.var("weight", &[d, 1, k, k], kaiming),
                c.bias.then(|| q.zeros("bias", &[d])),
            )
        };
        let kernels = match &c.learnable_kernel {
            Some(l) => {
                let (kernel, bias) = conv("conv", l.k_max);
                let radius = LearnableRadius {
                    theta: p.var(RADIUS_THETA, &[d], nn::Init::Const(0.0)),
                    init_radius: l.init_radius,
                    scale: l.radius_scale(),
                };
                Kernels::Learnable {
                    kernel,
                    bias,
                    radius,
                    tau: l.tau,
                }
            }
            None => Kernels::Fixed {
                large: (c.branches != Branches::Small).then(|| conv("conv_large", c.large_kernel)),
                small: (c.branches != Branches::Large).then(|| conv("conv_small", c.small_kernel)),
            },
        };
        Ok(Self {
            down,
            up,
            kernels,
            activation: c.activation,
            dropout: c.dropout,
            path: c.conv_path,
            prefix: crate::sites::path_name(p, ""),
        })
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The export description: tensors under `prefix` (`down`, `up`, `conv_large`,
    /// `conv_small`, or `conv` + `radius_theta` for learnable sizes), the activation and biases.
    fn describe(&self) -> serde_json::Value {
        let side = |k: &Option<(Tensor, Option<Tensor>)>| k.as_ref().map(|(w, _)| w.size()[2]);
        let kernels = match &self.kernels {
            Kernels::Fixed { large, small } => {
                serde_json::json!({ "large": side(large), "small": side(small) })
            }
            Kernels::Learnable {
                kernel,
                radius,
                tau,
                ..
            } => serde_json::json!({ "learnable": {
                "k_max": kernel.size()[2], "tau": tau, "init_radius": radius.init_radius,
                "scale": radius.scale,
            } }),
        };
        serde_json::json!({
            "kind": "dka",
            "prefix": self.prefix,
            "activation": self.activation,
            "bias": self.down.bs.is_some(),
            "kernels": kernels,
        })
    }

    fn act_in(&self, z: Tensor) -> Tensor {
        match self.activation {
            Activation::Authors => z.gelu("none"),
            Activation::Paper => z,
        }
    }
}

impl TokenModule for Dka {
    fn export(&self) -> Option<serde_json::Value> {
        Some(self.describe())
    }

    fn forward_t(&self, x: &Tensor, l: TokenLayout, train: bool) -> Tensor {
        let (b, n, _) = x.size3().expect("tokens are [batch, tokens, dim]");
        let z = self.act_in(self.down.forward(x));
        let d = z.size()[2];
        let hw = l.h * l.w;
        // A split, not two narrows: its backward concatenates the two gradients instead of
        // zero-filling two full-size buffers and adding them.
        let parts = if l.prefix > 0 {
            z.split_with_sizes([l.prefix, hw], 1)
        } else {
            vec![z.shallow_clone()]
        };
        let patches = parts.last().expect("the patch tokens");
        // [b, h*w, d] -> [b, d, h, w] with channels-last strides: a view, no copy.
        let grid = patches.reshape([b, l.h, l.w, d]).permute([0, 3, 1, 2]);
        if crate::probe::on() {
            if let Some((large, small)) = self.kernels.branch_outputs(&grid) {
                crate::probe::branches(&large, &small);
            }
        }
        let conv = self.kernels.forward(&grid, self.path).permute([0, 2, 3, 1]);
        // One copy puts the prefix tokens and the convolved grid back in token order (a cat
        // after a reshape would copy the grid twice); the gradients reach both through views.
        let y = if l.prefix > 0 {
            let y = Tensor::empty([b, n, d], (z.kind(), z.device()));
            y.narrow(1, 0, l.prefix).copy_(&parts[0]);
            y.narrow(1, l.prefix, hw)
                .view([b, l.h, l.w, d])
                .copy_(&conv);
            y
        } else {
            conv.reshape([b, hw, d])
        };
        x + self
            .up
            .forward(&y.gelu("none").dropout(self.dropout, train))
    }
}

impl MapModule for Dka {
    fn export(&self) -> Option<serde_json::Value> {
        Some(self.describe())
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let conv1x1 = |lin: &nn::Linear, t: &Tensor| {
            let s = lin.ws.size();
            t.conv2d(
                &lin.ws.view([s[0], s[1], 1, 1]),
                lin.bs.as_ref(),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )
        };
        let z = self.act_in(conv1x1(&self.down, x));
        if crate::probe::on() {
            if let Some((large, small)) = self.kernels.branch_outputs(&z) {
                crate::probe::branches(&large, &small);
            }
        }
        let y = self
            .kernels
            .forward(&z, self.path)
            .gelu("none")
            .dropout(self.dropout, train);
        x + conv1x1(&self.up, &y)
    }
}

impl Method for DkaConfig {
    fn name(&self) -> &'static str {
        "dka"
    }

    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()> {
        self.validate()?;
        if let Backbone::ResNet(m) = backbone {
            for (k, i, blk) in m.blocks_mut(&self.layers) {
                let q = p / format!("layer{}", k + 1) / i / "dka";
                blk.sites.after_block = Some(Rc::new(Dka::new(&q, blk.out_channels, self)?));
            }
            return Ok(());
        }
        let token_blocks = backbone.token_blocks_mut();
        for (i, (dim, sites)) in token_blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(&self.layers, *i))
        {
            let q = p / "blocks" / i;
            match self.placement {
                Placement::Mona => {
                    let m: Rc<Dka> = Rc::new(Dka::new(&(&q / "dka"), dim, self)?);
                    sites.after_attn = Some(m.clone());
                    sites.after_mlp = Some(m);
                }
                Placement::Branch => {
                    sites.attn_branch = Some(Rc::new(Dka::new(&(&q / "dka_attn"), dim, self)?));
                    sites.mlp_branch = Some(Rc::new(Dka::new(&(&q / "dka_mlp"), dim, self)?));
                }
                Placement::Block => {
                    sites.after_mlp = Some(Rc::new(Dka::new(&(&q / "dka"), dim, self)?))
                }
            }
        }
        Ok(())
    }
}
