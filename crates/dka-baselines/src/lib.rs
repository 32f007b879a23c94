//! The fine-tuning methods compared in the DKA paper, each behind dka-core's [`Method`] trait
//! (DKA itself lives in dka-core and gets no special path), and one typed [`MethodConfig`]
//! that picks a method and its fields from TOML or JSON (`{"name": "lora", "r": 8}`).
pub mod adapter;
pub mod adaptformer;
pub mod aim;
pub mod bitfit;
pub mod bottleneck;
pub mod ciat;
pub mod convpass;
pub mod full;
pub mod io;
pub mod linear;
pub mod lora;
pub mod peft;
pub mod vpt;

use dka_core::dka::DkaConfig;
use dka_core::method::Method;
use dka_core::sites::BlockSites;
use dka_core::{Backbone, CoreError};
use serde::{Deserialize, Serialize};

/// A method and its settings. Defaults are the DKA authors' settings where known (their
/// tables came from them); each file documents the original paper's settings as options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum MethodConfig {
    Full(full::FullFineTune),
    Linear(linear::LinearProbe),
    Bitfit(bitfit::BitFit),
    Vpt(vpt::VptConfig),
    Lora(lora::LoraConfig),
    Adapter(adapter::AdapterConfig),
    Adaptformer(adaptformer::AdaptFormerConfig),
    Convpass(convpass::ConvpassConfig),
    Ciat(ciat::CiatConfig),
    Aim(aim::AimConfig),
    Dka(DkaConfig),
}

/// Every method's name, in the order of the paper's tables.
pub const NAMES: [&str; 11] = [
    "full",
    "linear",
    "bitfit",
    "vpt",
    "lora",
    "adapter",
    "adaptformer",
    "convpass",
    "ciat",
    "aim",
    "dka",
];

impl MethodConfig {
    /// The method with its default settings.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "full" => Self::Full(Default::default()),
            "linear" => Self::Linear(Default::default()),
            "bitfit" => Self::Bitfit(Default::default()),
            "vpt" => Self::Vpt(Default::default()),
            "lora" => Self::Lora(Default::default()),
            "adapter" => Self::Adapter(Default::default()),
            "adaptformer" => Self::Adaptformer(Default::default()),
            "convpass" => Self::Convpass(Default::default()),
            "ciat" => Self::Ciat(Default::default()),
            "aim" => Self::Aim(Default::default()),
            "dka" => Self::Dka(Default::default()),
            _ => return None,
        })
    }

    pub fn method(&self) -> &dyn Method {
        match self {
            Self::Full(m) => m,
            Self::Linear(m) => m,
            Self::Bitfit(m) => m,
            Self::Vpt(m) => m,
            Self::Lora(m) => m,
            Self::Adapter(m) => m,
            Self::Adaptformer(m) => m,
            Self::Convpass(m) => m,
            Self::Ciat(m) => m,
            Self::Aim(m) => m,
            Self::Dka(m) => m,
        }
    }
}

/// The transformer blocks of `backbone` (width, sites), or an error naming `method` when the
/// backbone is a CNN.
pub fn transformer_blocks<'a>(
    backbone: &'a mut Backbone,
    method: &str,
    why: &str,
) -> dka_core::Result<Vec<(i64, &'a mut BlockSites)>> {
    let arch = backbone.arch();
    let blocks = backbone.token_blocks_mut();
    if blocks.is_empty() {
        return Err(CoreError::Unsupported {
            method: method.into(),
            arch: arch.into(),
            why: why.into(),
        });
    }
    Ok(blocks)
}
