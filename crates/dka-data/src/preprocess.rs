//! Resizing and normalisation from a backbone's preset, with optional augmentation.
//!
//! Everything geometric happens on 8-bit images ([`prepare_u8`]): decoded u8 RGB is cropped,
//! resized with the preset's interpolation (`Bilinear` is a triangle filter, `Bicubic`
//! Catmull-Rom; both antialias when downscaling, like PIL), flipped and padded; masks always
//! with nearest neighbour so they stay class maps. Normalisation to f32 happens once, at the
//! end ([`crate::normalize`]), on the CPU ([`prepare`]) or on the device (the trainer, from a
//! [`crate::cache::U8Batch`]).

use image::{GrayImage, RgbImage};
use ndarray::{Array2, Array3};

use crate::augment::Augment;
use crate::error::{DataError, Result};
use crate::normalize::{normalize_image, to_chw};
use crate::preset::{Interpolation, Preprocess, U8Sample, IGNORE_INDEX};
use crate::resize::{algorithm, content_size, fit};
use crate::rng::Rng;
use crate::sample::{RawSample, Sample, Target};

/// Crops (random when training, centre when `crop_pct` is set), resizes, flips (training)
/// and pads a decoded sample, all in 8 bits.
pub fn prepare_u8(
    raw: RawSample,
    pre: &Preprocess,
    augment: Option<(&Augment, &mut Rng)>,
) -> Result<U8Sample> {
    let (w, h) = raw.image.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::config(
            "cannot preprocess an empty (0-pixel) image",
        ));
    }
    if let Some(m) = &raw.mask {
        if m.dimensions() != (w, h) {
            return Err(DataError::config(format!(
                "mask is {:?} but its image is {:?}",
                m.dimensions(),
                (w, h)
            )));
        }
    }
    let (oh, ow) = pre.size;
    if oh == 0 || ow == 0 {
        return Err(DataError::config("the preprocessing size must be positive"));
    }
    let mut flip = false;
    let crop = match augment {
        Some((aug, rng)) => {
            let drawn = aug.draw(w, h, rng);
            flip = drawn.flip;
            drawn.crop
        }
        None => pre.eval_crop(w, h),
    }
    .unwrap_or((0, 0, w, h));
    let (cw, ch) = content_size(crop.2, crop.3, pre.size, pre.resize);
    let image = fit(
        raw.image.as_raw(),
        (w, h),
        3,
        crop,
        pre.size,
        pre.resize,
        algorithm(pre.interpolation),
        flip,
        0,
    )?;
    let mask = match &raw.mask {
        Some(m) => Some(fit(
            m.as_raw(),
            (w, h),
            1,
            crop,
            pre.size,
            pre.resize,
            algorithm(Interpolation::Nearest),
            flip,
            IGNORE_INDEX,
        )?),
        None => None,
    };
    Ok(U8Sample {
        image: RgbImage::from_raw(ow, oh, image).expect("fit returns size.0 * size.1 pixels"),
        mask: mask.map(|m| GrayImage::from_raw(ow, oh, m).expect("fit returns a full mask")),
        class: raw.class,
        extent: (ch, cw),
    })
}

/// Normalises an 8-bit sample into network input: (3, H, W) f32 and its target.
pub fn finish(s: U8Sample, pre: &Preprocess) -> Sample {
    let (ow, oh) = s.image.dimensions();
    let image = normalize_image(to_chw(&s.image).view(), pre);
    let target = match (s.mask, s.class) {
        (Some(m), _) => Target::Mask(
            Array2::from_shape_vec((oh as usize, ow as usize), m.into_raw())
                .expect("mask buffer matches its dimensions"),
        ),
        (None, Some(c)) => Target::Class(c),
        (None, None) => Target::Class(0),
    };
    Sample { image, target }
}

/// Turns a decoded sample into network input: [`prepare_u8`], then [`finish`].
pub fn prepare(
    raw: RawSample,
    pre: &Preprocess,
    augment: Option<(&Augment, &mut Rng)>,
) -> Result<Sample> {
    Ok(finish(prepare_u8(raw, pre, augment)?, pre))
}

/// (3, H, W) f32 of an image without any resizing, normalised by `pre`.
pub fn normalized_chw(image: &RgbImage, pre: &Preprocess) -> Array3<f32> {
    normalize_image(to_chw(image).view(), pre)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::{center_crop_box, PixelScale, ResizeMode};
    use image::{Luma, Rgb};

    fn raw(w: u32, h: u32) -> RawSample {
        let image = RgbImage::from_fn(w, h, |x, _| Rgb([(x * 255 / w) as u8; 3]));
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
        let s = prepare(raw(100, 70), &pre, None).unwrap();
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
        let a = prepare(raw(64, 64), &pre, Some((&aug, &mut Rng::new(3)))).unwrap();
        let b = prepare(raw(64, 64), &pre, Some((&aug, &mut Rng::new(3)))).unwrap();
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
        let plain = prepare(raw(8, 8), &pre, None).unwrap();
        let flipped = prepare(raw(8, 8), &pre, Some((&aug, &mut Rng::new(0)))).unwrap();
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

    #[test]
    fn longest_side_pad_keeps_the_aspect_and_pads_image_zero_and_mask_ignore() {
        let pre = Preprocess {
            size: (32, 32),
            resize: ResizeMode::LongestSidePad,
            crop_pct: Some(0.875),
            ..Preprocess::default()
        };
        let mut r = raw(64, 32);
        r.image = RgbImage::from_pixel(64, 32, Rgb([200, 100, 50]));
        r.mask = Some(GrayImage::from_pixel(64, 32, Luma([1])));
        let s = prepare_u8(r, &pre, None).unwrap();
        assert_eq!(
            s.extent,
            (16, 32),
            "64x32 fits 32x16: aspect kept, crop_pct unused"
        );
        for (x, y, p) in s.image.enumerate_pixels() {
            let want = if y < 16 { [200, 100, 50] } else { [0, 0, 0] };
            assert_eq!(p.0, want, "pixel ({x}, {y})");
        }
        let m = s.mask.unwrap();
        assert!(m
            .enumerate_pixels()
            .all(|(_, y, p)| p.0[0] == if y < 16 { 1 } else { 255 }));
    }

    #[test]
    fn decode_scale_covers_the_output() {
        let pre = Preprocess::default();
        assert_eq!(pre.decode_scale(1024, 768), 224.0 / 768.0);
        assert_eq!(pre.decode_scale(100, 100), 1.0);
        let sam = Preprocess {
            resize: ResizeMode::LongestSidePad,
            ..pre
        };
        assert_eq!(sam.decode_scale(1024, 768), 224.0 / 1024.0);
    }

    #[test]
    fn old_preset_json_still_parses() {
        let json = r#"{"size":[224,224],"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5],
            "interpolation":"bilinear","crop_pct":null}"#;
        let p: Preprocess = serde_json::from_str(json).unwrap();
        assert_eq!(p.resize, ResizeMode::Stretch);
        assert_eq!(p.scale, PixelScale::MeanStd);
    }
}
