//! Decoding 2D images and masks through `image`, with errors naming the file.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageReader, Rgb32FImage};

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

/// RGB in [0, 1]; grey images are replicated to three channels, 16-bit ones scaled.
pub fn read_rgb(path: &Path) -> Result<Rgb32FImage> {
    Ok(decode(path)?.to_rgb32f())
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
