//! Decoding 2D images and masks to 8 bits through `image` (never through full-resolution
//! f32), with errors naming the file. Large JPEGs can be decoded at a reduced DCT scale
//! ([`read_rgb_scaled`]) when the network input is much smaller.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageReader, RgbImage};

use crate::error::{DataError, Result};

fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader.decode().map_err(|source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Width and height from the header only.
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path: path.to_path_buf(),
            what: "image file".into(),
        });
    }
    let reader = ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader
        .into_dimensions()
        .map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// 8-bit RGB; grey images are replicated to three channels, 16-bit ones scaled to 8 bits
/// (alpha is dropped).
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode(path)?.into_rgb8())
}

fn is_jpeg(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| e == "jpg" || e == "jpeg")
}

/// Output length of `len` pixels under an IDCT of `k`/8 (what `jpeg-decoder` produces).
fn dct_len(len: u32, k: u32) -> u32 {
    (len * k - 1) / 8 + 1
}

/// Decodes a JPEG at 1/8 DCT scale when that output still has at least `scale(width,
/// height)` of the full resolution on both axes; `None` when it does not, or the file is
/// anything `jpeg-decoder` does not turn into 8-bit grey or RGB (the caller then decodes it
/// fully with `image`'s faster full decoder). Only 1/8 pays: measured here, `jpeg-decoder`
/// at 1/2 or 1/4 is slower than `image`'s full decode plus the resize (its entropy decoding
/// dominates), while at 1/8 a 4000x3000 photo for a 224 input takes 41 ms instead of 58.
fn read_jpeg_reduced(path: &Path, scale: &dyn Fn(u32, u32) -> f64) -> Result<Option<RgbImage>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut dec = jpeg_decoder::Decoder::new(&bytes[..]);
    if dec.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = dec.info() else {
        return Ok(None);
    };
    let (w, h) = (info.width as u32, info.height as u32);
    if w < 64 || h < 64 {
        return Ok(None);
    }
    let need = scale(w, h).clamp(0.0, 1.0);
    let fits = |k: u32| {
        dct_len(w, k) as f64 >= (w as f64 * need).ceil()
            && dct_len(h, k) as f64 >= (h as f64 * need).ceil()
    };
    let k = 1;
    if !fits(k) {
        return Ok(None);
    }
    let (tw, th) = (dct_len(w, k), dct_len(h, k));
    match dec.scale(tw as u16, th as u16) {
        Ok(got) if (got.0 as u32, got.1 as u32) == (tw, th) => {}
        _ => return Ok(None),
    }
    let Ok(pixels) = dec.decode() else {
        return Ok(None);
    };
    let rgb = match dec.info().map(|i| i.pixel_format) {
        Some(jpeg_decoder::PixelFormat::RGB24) => pixels,
        Some(jpeg_decoder::PixelFormat::L8) => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => return Ok(None),
    };
    Ok(RgbImage::from_raw(tw, th, rgb))
}

/// Like [`read_rgb`], but a JPEG may come out smaller: at 1/8 DCT scale when that keeps at
/// least `scale(width, height)` of its resolution (see
/// [`Preprocess::decode_scale`](crate::Preprocess::decode_scale)). Other formats, small
/// images and JPEGs the reduced decoder cannot read are decoded fully.
pub fn read_rgb_scaled(path: &Path, scale: &dyn Fn(u32, u32) -> f64) -> Result<RgbImage> {
    if is_jpeg(path) {
        if let Some(img) = read_jpeg_reduced(path, scale)? {
            return Ok(img);
        }
    }
    read_rgb(path)
}

/// How mask pixel values become classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskValues {
    /// Any non-zero value is foreground (class 1): 0/255 masks of ISIC and BUSI.
    Binary,
    /// Values are class indices (0..=255).
    Index,
}

/// A mask as a class map. Colour masks are read through their luma; 16-bit index masks
/// keep their values (an error above 255).
pub fn read_mask(path: &Path, values: MaskValues) -> Result<GrayImage> {
    let img = decode(path)?;
    let mut mask = match img {
        DynamicImage::ImageLuma16(m) => {
            let (w, h) = m.dimensions();
            let mut out = GrayImage::new(w, h);
            for (o, &v) in out.iter_mut().zip(m.as_raw()) {
                *o = match values {
                    MaskValues::Binary => u8::from(v > 0),
                    MaskValues::Index => u8::try_from(v).map_err(|_| {
                        DataError::layout(
                            path,
                            format!("mask value {v} is not a class index (0..=255)"),
                        )
                    })?,
                };
            }
            return Ok(out);
        }
        other => other.to_luma8(),
    };
    if values == MaskValues::Binary {
        for v in mask.iter_mut() {
            *v = u8::from(*v > 0);
        }
    }
    Ok(mask)
}

/// Decodes every file of a record fully (the `CheckLevel::Decode` scan).
pub fn check_decodes(path: &Path) -> Result<()> {
    decode(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_jpegs_decode_at_an_eighth_when_that_covers_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.jpg");
        RgbImage::from_fn(800, 640, |x, y| {
            image::Rgb([(x / 4) as u8, (y / 3) as u8, 90])
        })
        .save(&p)
        .unwrap();
        let full = read_rgb(&p).unwrap();
        assert_eq!(full.dimensions(), (800, 640));
        let small = read_rgb_scaled(&p, &|w, h| (64.0 / w as f64).max(64.0 / h as f64)).unwrap();
        assert_eq!(small.dimensions(), (100, 80));
        // Close to the full image averaged over 8x8 blocks.
        let (x, y) = (50, 40);
        let block: f64 = (0..8)
            .flat_map(|dy| (0..8).map(move |dx| (dx, dy)))
            .map(|(dx, dy)| full.get_pixel(x * 8 + dx, y * 8 + dy).0[0] as f64)
            .sum::<f64>()
            / 64.0;
        assert!((small.get_pixel(x, y).0[0] as f64 - block).abs() < 4.0);
        // 1/8 would not cover 200 pixels: decoded fully.
        let no = read_rgb_scaled(&p, &|w, _| 200.0 / w as f64).unwrap();
        assert_eq!(no, full);
    }
}
