//! What a pretrained checkpoint was trained to see: input size, pixel scaling (mean/std or
//! per-image min-max), resize mode and interpolation. Presets carry their checkpoint's values
//! (timm's `pretrained_cfg` and the SAM/MedSAM code); a JSON backbone config may carry an
//! `"input": {...}` object of the same fields; a run's config can override any field.
use crate::backbone::PRESETS;
use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// ImageNet mean (timm's `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// timm's `IMAGENET_INCEPTION_MEAN`/`_STD` (0.5), used by the AugReg and original ViTs.
pub const HALF: [f32; 3] = [0.5, 0.5, 0.5];
/// SAM's `pixel_mean` / `pixel_std` (on 0–255), divided by 255.
pub const SAM_MEAN: [f32; 3] = [123.675 / 255.0, 116.28 / 255.0, 103.53 / 255.0];
pub const SAM_STD: [f32; 3] = [58.395 / 255.0, 57.12 / 255.0, 57.375 / 255.0];

/// How pixel values in [0, 1] become network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelScale {
    /// `(x − mean) / std` per channel.
    MeanStd,
    /// Per image: `(x − min) / (max − min)` over all channels (MedSAM); mean/std unused.
    MinMax,
}

/// How an image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Both sides to the input size (aspect not kept).
    Stretch,
    /// The longest side to the input size, aspect kept, zero padding bottom/right (SAM).
    LongestSidePad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interp {
    Bilinear,
    Bicubic,
}

/// A checkpoint's input convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Square input size the checkpoint was trained at.
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub scale: PixelScale,
    pub resize: ResizeMode,
    pub interpolation: Interp,
    /// Where these values come from (checkpoint tag or code), for the run's record.
    pub source: String,
}

impl InputSpec {
    fn mean_std(size: u32, mean: [f32; 3], std: [f32; 3], interp: Interp, source: &str) -> Self {
        Self {
            size,
            mean,
            std,
            scale: PixelScale::MeanStd,
            resize: ResizeMode::Stretch,
            interpolation: interp,
            source: source.into(),
        }
    }

    /// The input convention of a preset's usual checkpoint.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "vit_tiny_patch16_224" | "vit_small_patch16_224" | "vit_base_patch16_224" => {
                Self::mean_std(
                    224,
                    HALF,
                    HALF,
                    Interp::Bicubic,
                    &format!("timm {name}.augreg2_in21k_ft_in1k / .augreg_in21k_ft_in1k (mean = std = 0.5)"),
                )
            }
            "resnet18" | "resnet34" | "resnet50" | "resnet101" => Self::mean_std(
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
                Interp::Bilinear,
                "torchvision / timm ImageNet ResNet (ImageNet mean/std)",
            ),
            "samvit_base_patch16" => Self {
                resize: ResizeMode::LongestSidePad,
                ..Self::mean_std(
                    1024,
                    SAM_MEAN,
                    SAM_STD,
                    Interp::Bilinear,
                    "SAM ViT-B (pixel mean/std, longest side to 1024, zero padding)",
                )
            },
            "medsam_vit_b" => Self {
                scale: PixelScale::MinMax,
                ..Self::mean_std(
                    1024,
                    [0.0; 3],
                    [1.0; 3],
                    Interp::Bicubic,
                    "MedSAM ViT-B (per-image min-max to [0, 1], 1024 x 1024)",
                )
            },
            "litemedsam_tinyvit" => Self {
                scale: PixelScale::MinMax,
                resize: ResizeMode::LongestSidePad,
                ..Self::mean_std(
                    256,
                    [0.0; 3],
                    [1.0; 3],
                    Interp::Bilinear,
                    "LiteMedSAM TinyViT (per-image min-max to [0, 1], longest side to 256, zero padding)",
                )
            },
            _ => return None,
        })
    }

    /// The spec of a backbone given as a preset name or a JSON config path (its `input`
    /// object); `None` when neither says (the caller then falls back to ImageNet mean/std and
    /// says so).
    pub fn for_backbone(spec: &str) -> Result<Option<Self>> {
        if let Some(s) = Self::preset(spec) {
            return Ok(Some(s));
        }
        if PRESETS.contains(&spec) {
            return Ok(None);
        }
        let path = Path::new(spec);
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CoreError::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        match v.get("input") {
            None => Ok(None),
            Some(i) => serde_json::from_value(i.clone())
                .map(Some)
                .map_err(|e| CoreError::Config {
                    path: path.into(),
                    message: format!("\"input\": {e}"),
                }),
        }
    }

    /// ImageNet mean/std at `size`, bicubic: the fallback for a backbone without a spec.
    pub fn imagenet_default(size: u32) -> Self {
        Self::mean_std(
            size,
            IMAGENET_MEAN,
            IMAGENET_STD,
            Interp::Bicubic,
            "none recorded for this backbone: ImageNet mean/std assumed",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_json_specs() {
        assert_eq!(
            InputSpec::preset("vit_base_patch16_224").unwrap().mean,
            HALF
        );
        let m = InputSpec::preset("medsam_vit_b").unwrap();
        assert_eq!((m.scale, m.size), (PixelScale::MinMax, 1024));
        assert_eq!(
            InputSpec::preset("samvit_base_patch16").unwrap().resize,
            ResizeMode::LongestSidePad
        );
        let d = std::env::temp_dir().join(format!("dka-input-{}.json", std::process::id()));
        std::fs::write(
            &d,
            r#"{"depth": 2, "input": {"size": 224, "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225], "scale": "mean-std", "resize": "stretch",
               "interpolation": "bicubic", "source": "DINOv2"}}"#,
        )
        .unwrap();
        let s = InputSpec::for_backbone(d.to_str().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(s.mean, IMAGENET_MEAN);
        std::fs::remove_file(&d).unwrap();
        assert!(InputSpec::for_backbone("resnet50").unwrap().is_some());
    }
}
