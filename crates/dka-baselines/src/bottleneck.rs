//! The bottleneck `Up(act(Down z))` that Adapter, AdaptFormer, CIAT and AIM share, with the
//! knobs in which they differ (activation, scale, dropout, inner skip, which input a parallel
//! bottleneck reads, init).
use dka_core::sites::{MapModule, ParallelModule, TokenLayout, TokenModule};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Act {
    Gelu,
    Relu,
    /// `x * sigmoid(1.702 x)` (CLIP's, used by Convpass).
    QuickGelu,
}

impl Act {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::Gelu => x.gelu("none"),
            Act::Relu => x.relu(),
            Act::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// What a parallel bottleneck reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feed {
    /// The branch's residual input (AdaptFormer).
    Residual,
    /// The normalised input the branch itself sees (CIAT, AIM, Convpass).
    Normed,
}

/// How `Down` starts (`Up` always starts at zero, so the method starts as the backbone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownInit {
    /// Kaiming-uniform with a = sqrt(5) (PyTorch's Linear default: U(±1/sqrt(in))), zero bias.
    KaimingUniform,
    Xavier,
}

#[derive(Debug)]
pub struct Bottleneck {
    down: nn::Linear,
    up: nn::Linear,
    pub act: Act,
    pub scale: f64,
    pub dropout: f64,
    /// `z + scale * Up(...)` instead of `scale * Up(...)`.
    pub skip: bool,
    pub feed: Feed,
    /// Where its tensors are (`blocks.0.adapter_attn`), for export.
    prefix: String,
}

impl Bottleneck {
    pub fn new(p: &nn::Path, dim: i64, hidden: i64, init: DownInit) -> Self {
        let down_cfg = match init {
            DownInit::KaimingUniform => {
                let a = 1.0 / (dim as f64).sqrt();
                nn::LinearConfig {
                    ws_init: nn::Init::Uniform { lo: -a, up: a },
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                }
            }
            DownInit::Xavier => {
                let a = (6.0 / (dim + hidden) as f64).sqrt();
                nn::LinearConfig {
                    ws_init: nn::Init::Uniform { lo: -a, up: a },
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                }
            }
        };
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Self {
            down: nn::linear(p / "down", dim, hidden, down_cfg),
            up: nn::linear(p / "up", hidden, dim, zero),
            act: Act::Gelu,
            scale: 1.0,
            dropout: 0.0,
            skip: false,
            feed: Feed::Normed,
            prefix: dka_core::sites::path_name(p, ""),
        }
    }

    /// The export description: `down` and `up` under `prefix`, and the knobs.
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "bottleneck",
            "prefix": self.prefix,
            "act": self.act,
            "scale": self.scale,
            "skip": self.skip,
            "feed": self.feed,
        })
    }

    pub fn with(mut self, act: Act, scale: f64, dropout: f64, skip: bool, feed: Feed) -> Self {
        (self.act, self.scale, self.dropout, self.skip, self.feed) =
            (act, scale, dropout, skip, feed);
        self
    }

    fn delta(&self, z: &Tensor, train: bool) -> Tensor {
        let h = self
            .act
            .apply(&self.down.forward(z))
            .dropout(self.dropout, train);
        let u = self.up.forward(&h);
        // Scale 1 (Adapter, the DKA authors' AdaptFormer and CIAT) costs no extra pass.
        if self.scale == 1.0 {
            u
        } else {
            u * self.scale
        }
    }
}

impl TokenModule for Bottleneck {
    fn export(&self) -> Option<serde_json::Value> {
        Some(self.describe())
    }

    fn forward_t(&self, x: &Tensor, _l: TokenLayout, train: bool) -> Tensor {
        let d = self.delta(x, train);
        if self.skip {
            x + d
        } else {
            d
        }
    }
}

impl ParallelModule for Bottleneck {
    fn export(&self) -> Option<serde_json::Value> {
        Some(self.describe())
    }

    fn forward_t(&self, x: &Tensor, normed: &Tensor, l: TokenLayout, train: bool) -> Tensor {
        let input = match self.feed {
            Feed::Residual => x,
            Feed::Normed => normed,
        };
        TokenModule::forward_t(self, input, l, train)
    }
}

/// On a CNN map the bottleneck acts per pixel over channels (1x1 projections).
impl MapModule for Bottleneck {
    fn export(&self) -> Option<serde_json::Value> {
        Some(self.describe())
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let t = x.permute([0, 2, 3, 1]);
        let (_, h, w, _) = t.size4().expect("map is 4-D");
        TokenModule::forward_t(self, &t, TokenLayout { prefix: 0, h, w }, train)
            .permute([0, 3, 1, 2])
    }
}
