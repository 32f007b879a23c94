//! Core of dka: backbones with adapter insertion sites over libtorch, weight loading.
//!
//! Backbones (one file each, timm's or the checkpoint's state-dict names): [`vit`], [`resnet`],
//! [`samvit`], [`tinyvit`];
//! [`backbone`] puts them behind one handle. [`sites`] defines where adapters attach; [`erf`]
//! measures effective receptive fields.
pub mod attention;
pub mod backbone;
pub mod convert;
pub mod dka;
pub mod erf;
pub mod error;
pub mod input;
pub mod layers;
pub mod method;
pub mod probe;
pub mod reduced;
pub mod resnet;
pub mod samvit;
pub mod sites;
pub mod tinyvit;
pub mod vit;
pub mod weights;

pub use backbone::{Backbone, BackboneConfig, Features};
pub use error::{CoreError, Result};
