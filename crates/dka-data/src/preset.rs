//! What a backbone expects of its input (size, resizing, interpolation, normalisation) and an
//! 8-bit sample resized to it: the types [`crate::preprocess`] and the loaders share.

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::augment::CropBox;

/// ImageNet mean, the default of every preset in the paper.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Mask value of pixels that are not part of the image (padding): metrics and losses skip it.
pub const IGNORE_INDEX: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

/// How an image (or its crop) becomes the network's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Both sides to the input size (aspect not kept).
    #[default]
    Stretch,
    /// SAM / MedSAM: the longest side to the input size, aspect kept, zero padding at the
    /// bottom and right (mask padding is [`IGNORE_INDEX`]). `crop_pct` is not used.
    LongestSidePad,
}

/// How 8-bit pixels become network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelScale {
    /// `(x / 255 - mean[c]) / std[c]`.
    #[default]
    MeanStd,
    /// MedSAM: per image `(x - min) / (max - min)` over all channels, to [0, 1] (0 for a
    /// constant image); `mean` and `std` are not used.
    MinMax,
}

/// What the backbone expects: input size, normalisation and interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// (height, width) of the network input.
    pub size: (u32, u32),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: Interpolation,
    /// Evaluation resize: `None` stretches the whole image to `size` (the default, so masks
    /// cover the whole image); `Some(p)` resizes to `size / p` and centre-crops, like timm.
    pub crop_pct: Option<f32>,
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub scale: PixelScale,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: (224, 224),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            interpolation: Interpolation::Bicubic,
            crop_pct: None,
            resize: ResizeMode::Stretch,
            scale: PixelScale::MeanStd,
        }
    }
}

impl Preprocess {
    /// The evaluation crop of a `width` x `height` image, if any (timm's centre crop; only
    /// with `Stretch`).
    pub fn eval_crop(&self, width: u32, height: u32) -> Option<CropBox> {
        match (self.resize, self.crop_pct) {
            (ResizeMode::Stretch, Some(p)) => Some(center_crop_box(width, height, self.size, p)),
            _ => None,
        }
    }

    /// The fraction of a `width` x `height` image's resolution that evaluation preprocessing
    /// needs (at most 1): a decoder may decode at any scale at least this large (JPEG DCT
    /// scaling) without the output losing detail beyond what the resize discards anyway.
    pub fn decode_scale(&self, width: u32, height: u32) -> f64 {
        let (oh, ow) = (self.size.0 as f64, self.size.1 as f64);
        let (w, h) = (width.max(1) as f64, height.max(1) as f64);
        let s = match (self.resize, self.crop_pct) {
            (ResizeMode::Stretch, None) => (ow / w).max(oh / h),
            (ResizeMode::Stretch, Some(p)) => (ow / w).max(oh / h) / (p as f64).clamp(1e-3, 1.0),
            (ResizeMode::LongestSidePad, _) => (ow / w).min(oh / h),
        };
        s.min(1.0)
    }
}

/// The centre crop box that timm's eval transform keeps (in source pixels).
pub(crate) fn center_crop_box(width: u32, height: u32, size: (u32, u32), crop_pct: f32) -> CropBox {
    // Resize so that the output covers size / crop_pct, then keep the central `size`.
    let scale_h = size.0 as f64 / crop_pct as f64 / height as f64;
    let scale_w = size.1 as f64 / crop_pct as f64 / width as f64;
    let scale = scale_h.max(scale_w);
    let cw = ((size.1 as f64 / scale).round() as u32).clamp(1, width);
    let ch = ((size.0 as f64 / scale).round() as u32).clamp(1, height);
    ((width - cw) / 2, (height - ch) / 2, cw, ch)
}

/// A sample resized to the network's input size, still 8-bit.
#[derive(Debug, Clone, PartialEq)]
pub struct U8Sample {
    /// RGB, `size` (height, width); padding (longest side) is 0.
    pub image: RgbImage,
    /// Class map, same size; padding is [`IGNORE_INDEX`].
    pub mask: Option<GrayImage>,
    pub class: Option<usize>,
    /// (height, width) of the content at the top-left; the rest is padding.
    pub extent: (u32, u32),
}
