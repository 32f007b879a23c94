//! 8-bit resizing with `fast_image_resize` (SIMD u8 paths) and the geometry shared by the
//! decode path ([`crate::preprocess::prepare_u8`]) and the cached-image augmentation
//! ([`crate::cache`]): crop, fit (stretch or longest side), flip, pad.
//!
//! Filters match the f32 path they replace: `Bilinear` is a triangle filter and `Bicubic`
//! Catmull-Rom, both widened when downscaling (antialias, like PIL); `Nearest` for masks.

use std::cell::RefCell;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::{U8x3, U8};
use fast_image_resize::{FilterType, PixelTrait, ResizeAlg, ResizeOptions, Resizer};

use crate::augment::CropBox;
use crate::error::{DataError, Result};
use crate::preset::{Interpolation, ResizeMode};

thread_local! {
    /// One resizer per thread keeps its scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// The `fast_image_resize` algorithm of an interpolation.
pub(crate) fn algorithm(interpolation: Interpolation) -> ResizeAlg {
    match interpolation {
        Interpolation::Nearest => ResizeAlg::Nearest,
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
    }
}

/// One pixel type's resize. `Resizer::resize` would dispatch at run time over all thirteen
/// pixel types of the crate, each monomorphised here (about 100 s of a cold build on 2 cores);
/// this crate resizes only `u8` grey and RGB images.
fn resize_typed<P: PixelTrait>(
    src: &[u8],
    (w, h): (u32, u32),
    (out_w, out_h): (u32, u32),
    opts: &ResizeOptions,
) -> Result<Vec<u8>> {
    let src = TypedImageRef::<P>::from_buffer(w, h, src)
        .map_err(|e| DataError::config(format!("bad {w}x{h} source buffer ({e})")))?;
    let mut out = vec![0u8; out_w as usize * out_h as usize * P::size()];
    let mut dst = TypedImage::<P>::from_buffer(out_w, out_h, &mut out)
        .map_err(|e| DataError::config(format!("bad {out_w}x{out_h} output buffer ({e})")))?;
    RESIZER
        .with(|r| r.borrow_mut().resize_typed(&src, &mut dst, opts))
        .map_err(|e| {
            DataError::config(format!("resizing {w}x{h} to {out_w}x{out_h} failed ({e})"))
        })?;
    Ok(out)
}

/// Resizes `crop` of a packed image (`w` x `h`, `channels` bytes per pixel, rows top to
/// bottom) to `out_w` x `out_h`; returns the packed result.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize_u8(
    src: &[u8],
    (w, h): (u32, u32),
    channels: usize,
    crop: CropBox,
    (out_w, out_h): (u32, u32),
    alg: ResizeAlg,
) -> Result<Vec<u8>> {
    if channels != 1 && channels != 3 {
        return Err(DataError::config(format!(
            "cannot resize images with {channels} channels"
        )));
    }
    let (x, y, cw, ch) = crop;
    if w == 0 || h == 0 || cw == 0 || ch == 0 || x + cw > w || y + ch > h {
        return Err(DataError::config(format!(
            "crop {crop:?} does not fit a {w}x{h} image"
        )));
    }
    if (x, y, cw, ch) == (0, 0, out_w, out_h) && (w, h) == (out_w, out_h) {
        return Ok(src[..(w * h) as usize * channels].to_vec());
    }
    let opts = ResizeOptions::new()
        .resize_alg(alg)
        .crop(x as f64, y as f64, cw as f64, ch as f64);
    let src = src.get(..(w * h) as usize * channels).ok_or_else(|| {
        DataError::config(format!(
            "bad {w}x{h} source buffer ({} bytes for {channels} channel(s))",
            src.len()
        ))
    })?;
    if channels == 1 {
        resize_typed::<U8>(src, (w, h), (out_w, out_h), &opts)
    } else {
        resize_typed::<U8x3>(src, (w, h), (out_w, out_h), &opts)
    }
}

/// Width and height of the content of an output of `size` (height, width) made from a crop
/// of `crop_w` x `crop_h`: the whole output (stretch), or the crop scaled to fit inside it
/// with its aspect kept (longest side; SAM rounds half up, so do we).
pub(crate) fn content_size(
    crop_w: u32,
    crop_h: u32,
    size: (u32, u32),
    mode: ResizeMode,
) -> (u32, u32) {
    let (oh, ow) = size;
    match mode {
        ResizeMode::Stretch => (ow, oh),
        ResizeMode::LongestSidePad => {
            let s = (oh as f64 / crop_h as f64).min(ow as f64 / crop_w as f64);
            let nw = ((crop_w as f64 * s + 0.5).floor() as u32).clamp(1, ow);
            let nh = ((crop_h as f64 * s + 0.5).floor() as u32).clamp(1, oh);
            (nw, nh)
        }
    }
}

/// Copies packed `content` (`cw` x `ch`) to the top-left of `out` (`ow` x `oh`, same
/// `channels`), mirrored left-right when `flip`, and fills the rest with `pad`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn place(
    content: &[u8],
    (cw, ch): (u32, u32),
    channels: usize,
    flip: bool,
    out: &mut [u8],
    (ow, oh): (u32, u32),
    pad: u8,
) {
    let (cw, ch, ow, oh) = (cw as usize, ch as usize, ow as usize, oh as usize);
    let (crow, orow) = (cw * channels, ow * channels);
    for y in 0..oh {
        let dst = &mut out[y * orow..(y + 1) * orow];
        if y >= ch {
            dst.fill(pad);
            continue;
        }
        let src = &content[y * crow..(y + 1) * crow];
        if flip {
            for x in 0..cw {
                let s = (cw - 1 - x) * channels;
                dst[x * channels..(x + 1) * channels].copy_from_slice(&src[s..s + channels]);
            }
        } else {
            dst[..crow].copy_from_slice(src);
        }
        dst[crow..].fill(pad);
    }
}

/// Crops, resizes to `size` (height, width) by `mode`, flips and pads one packed image:
/// the whole geometric part of preprocessing. Returns the packed output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit(
    src: &[u8],
    dims: (u32, u32),
    channels: usize,
    crop: CropBox,
    size: (u32, u32),
    mode: ResizeMode,
    alg: ResizeAlg,
    flip: bool,
    pad: u8,
) -> Result<Vec<u8>> {
    let (oh, ow) = size;
    let content = content_size(crop.2, crop.3, size, mode);
    let resized = resize_u8(src, dims, channels, crop, content, alg)?;
    if content == (ow, oh) && !flip {
        return Ok(resized);
    }
    let mut out = vec![0u8; (ow * oh) as usize * channels];
    place(&resized, content, channels, flip, &mut out, (ow, oh), pad);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_keeps_the_aspect() {
        assert_eq!(
            content_size(200, 100, (64, 64), ResizeMode::LongestSidePad),
            (64, 32)
        );
        assert_eq!(
            content_size(100, 300, (60, 60), ResizeMode::LongestSidePad),
            (20, 60)
        );
        assert_eq!(
            content_size(100, 300, (60, 60), ResizeMode::Stretch),
            (60, 60)
        );
    }

    #[test]
    fn place_flips_and_pads() {
        let content = [1, 2, 3, 4, 5, 6];
        let mut out = [9u8; 12];
        place(&content, (3, 2), 1, true, &mut out, (4, 3), 255);
        assert_eq!(out, [3, 2, 1, 255, 6, 5, 4, 255, 255, 255, 255, 255]);
    }

    #[test]
    fn nearest_keeps_values_and_identity_copies() {
        let src: Vec<u8> = (0..16).map(|v| (v % 3) as u8).collect();
        let out = resize_u8(&src, (4, 4), 1, (0, 0, 4, 4), (9, 7), ResizeAlg::Nearest).unwrap();
        assert_eq!(out.len(), 63);
        assert!(out.iter().all(|&v| v < 3));
        let same = resize_u8(
            &src,
            (4, 4),
            1,
            (0, 0, 4, 4),
            (4, 4),
            algorithm(Interpolation::Bicubic),
        );
        assert_eq!(same.unwrap(), src);
    }

    #[test]
    fn a_crop_outside_the_image_is_an_error() {
        let src = vec![0u8; 12];
        assert!(resize_u8(&src, (2, 2), 3, (1, 0, 2, 2), (4, 4), ResizeAlg::Nearest).is_err());
    }
}
