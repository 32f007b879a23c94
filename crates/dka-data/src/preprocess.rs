//! Resizing and normalisation from a backbone's preset, with optional augmentation.
//!
//! Images are resized with the preset's interpolation (`Bilinear` is image's `Triangle`
//! filter, `Bicubic` its Catmull-Rom filter; both antialias when downscaling, like PIL);
//! masks always with nearest neighbour so they stay class maps.

use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb32FImage};
use ndarray::{Array2, Array3};
use serde::{Deserialize, Serialize};

use crate::augment::{Augment, CropBox};
use crate::rng::Rng;
use crate::sample::{RawSample, Sample, Target};

/// ImageNet mean, the default of every preset in the paper.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

impl Interpolation {
    fn filter(self) -> FilterType {
        match self {
            Interpolation::Nearest => FilterType::Nearest,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
        }
    }
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
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: (224, 224),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            interpolation: Interpolation::Bicubic,
            crop_pct: None,
        }
    }
}

fn crop_rgb(img: &Rgb32FImage, (x, y, w, h): CropBox) -> Rgb32FImage {
    imageops::crop_imm(img, x, y, w, h).to_image()
}

fn crop_gray(img: &GrayImage, (x, y, w, h): CropBox) -> GrayImage {
    imageops::crop_imm(img, x, y, w, h).to_image()
}

/// The centre crop box that timm's eval transform keeps (in source pixels).
fn center_crop_box(width: u32, height: u32, size: (u32, u32), crop_pct: f32) -> CropBox {
    // Resize so that the output covers size / crop_pct, then keep the central `size`.
    let scale_h = size.0 as f64 / crop_pct as f64 / height as f64;
    let scale_w = size.1 as f64 / crop_pct as f64 / width as f64;
    let scale = scale_h.max(scale_w);
    let cw = ((size.1 as f64 / scale).round() as u32).clamp(1, width);
    let ch = ((size.0 as f64 / scale).round() as u32).clamp(1, height);
    ((width - cw) / 2, (height - ch) / 2, cw, ch)
}

/// Turns a decoded sample into network input: crop (random when training, centre when
/// `crop_pct` is set), flip (training), resize, normalise to (3, H, W).
pub fn prepare(raw: RawSample, pre: &Preprocess, augment: Option<(&Augment, &mut Rng)>) -> Sample {
    let (w, h) = raw.image.dimensions();
    let (mut image, mut mask) = (raw.image, raw.mask);
    let mut flip = false;
    let crop = match augment {
        Some((aug, rng)) => {
            let drawn = aug.draw(w, h, rng);
            flip = drawn.flip;
            drawn.crop
        }
        None => pre.crop_pct.map(|p| center_crop_box(w, h, pre.size, p)),
    };
    if let Some(b) = crop {
        if b != (0, 0, w, h) {
            image = crop_rgb(&image, b);
            mask = mask.map(|m| crop_gray(&m, b));
        }
    }
    let (oh, ow) = pre.size;
    if image.dimensions() != (ow, oh) {
        image = imageops::resize(&image, ow, oh, pre.interpolation.filter());
    }
    let mask = mask.map(|m| {
        if m.dimensions() != (ow, oh) {
            imageops::resize(&m, ow, oh, FilterType::Nearest)
        } else {
            m
        }
    });
    if flip {
        imageops::flip_horizontal_in_place(&mut image);
    }
    let image_chw = to_chw(&image, pre);
    let target = match (mask, raw.class) {
        (Some(mut m), _) => {
            if flip {
                imageops::flip_horizontal_in_place(&mut m);
            }
            Target::Mask(
                Array2::from_shape_vec((oh as usize, ow as usize), m.into_raw())
                    .expect("mask buffer matches its dimensions"),
            )
        }
        (None, Some(c)) => Target::Class(c),
        (None, None) => Target::Class(0),
    };
    Sample {
        image: image_chw,
        target,
    }
}

/// (3, H, W) normalised with the preset's mean and std.
fn to_chw(image: &Rgb32FImage, pre: &Preprocess) -> Array3<f32> {
    let (w, h) = image.dimensions();
    let (w, h) = (w as usize, h as usize);
    let raw = image.as_raw();
    Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        (raw[(y * w + x) * 3 + c].clamp(0.0, 1.0) - pre.mean[c]) / pre.std[c]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    fn raw(w: u32, h: u32) -> RawSample {
        let image = Rgb32FImage::from_fn(w, h, |x, _| Rgb([x as f32 / w as f32; 3]));
        let mask = GrayImage::from_fn(w, h, |x, y| Luma([((x + y) % 3) as u8]));
        RawSample {
            image,
            mask: Some(mask),
            class: None,
        }
    }

    #[test]
    fn eval_resizes_to_size_and_masks_stay_class_maps() {
        let pre = Preprocess {
            size: (32, 48),
            ..Preprocess::default()
        };
        let s = prepare(raw(100, 70), &pre, None);
        assert_eq!(s.image.shape(), &[3, 32, 48]);
        let Target::Mask(m) = s.target else {
            panic!("expected a mask")
        };
        assert_eq!(m.shape(), &[32, 48]);
        assert!(
            m.iter().all(|&v| v < 3),
            "nearest neighbour invents no class"
        );
    }

    #[test]
    fn augmentation_is_deterministic_and_keeps_image_and_mask_aligned() {
        let pre = Preprocess {
            size: (16, 16),
            ..Preprocess::default()
        };
        let aug = Augment::default();
        let a = prepare(raw(64, 64), &pre, Some((&aug, &mut Rng::new(3))));
        let b = prepare(raw(64, 64), &pre, Some((&aug, &mut Rng::new(3))));
        assert_eq!(a.image, b.image);
        assert_eq!(a.target, b.target);
    }

    #[test]
    fn flip_applies_to_image_and_mask() {
        let pre = Preprocess {
            size: (8, 8),
            interpolation: Interpolation::Nearest,
            ..Preprocess::default()
        };
        let aug = Augment {
            random_resized_crop: None,
            hflip: 1.0,
        };
        let plain = prepare(raw(8, 8), &pre, None);
        let flipped = prepare(raw(8, 8), &pre, Some((&aug, &mut Rng::new(0))));
        assert_eq!(flipped.image[[0, 0, 0]], plain.image[[0, 0, 7]]);
        let (Target::Mask(a), Target::Mask(b)) = (plain.target, flipped.target) else {
            panic!("expected masks")
        };
        assert_eq!(a[[2, 0]], b[[2, 7]]);
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        let b = center_crop_box(256, 256, (224, 224), 0.875);
        assert_eq!(b, (16, 16, 224, 224));
    }
}
