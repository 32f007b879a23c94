//! Helpers to build small files in a release's exact layout: used by this crate's tests and
//! by other crates' tests (e.g. a trainer smoke test on a generated BUSI tree). Nothing here
//! is needed at run time.

use std::io::Write;
use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::nifti_volume::Affine;

/// A 1 mm RAS+ affine at the origin.
pub const RAS_1MM: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
];

fn bitpix(datatype: i16) -> i16 {
    match datatype {
        2 | 256 => 8,
        4 | 512 => 16,
        8 | 16 | 768 => 32,
        64 | 1024 | 1280 => 64,
        _ => 8,
    }
}

/// A single-file NIfTI (`n+1` or, with `nifti2`, `n+2`), little-endian, sform set from
/// `affine`; `data` is the raw voxel bytes in NIfTI (x-fastest) order.
pub fn encode_nifti(
    dims: [usize; 3],
    datatype: i16,
    data: &[u8],
    affine: &Affine,
    nifti2: bool,
) -> Vec<u8> {
    let mut h = if nifti2 {
        vec![0u8; 544]
    } else {
        vec![0u8; 352]
    };
    let put = |h: &mut Vec<u8>, o: usize, b: &[u8]| h[o..o + b.len()].copy_from_slice(b);
    if nifti2 {
        put(&mut h, 0, &540i32.to_le_bytes());
        put(&mut h, 4, b"n+2\0\r\n\x1a\n");
        put(&mut h, 12, &datatype.to_le_bytes());
        put(&mut h, 14, &bitpix(datatype).to_le_bytes());
        put(&mut h, 16, &3i64.to_le_bytes());
        for (k, d) in dims.iter().enumerate() {
            put(&mut h, 24 + 8 * k, &(*d as i64).to_le_bytes());
        }
        for k in 4..8 {
            put(&mut h, 16 + 8 * k, &1i64.to_le_bytes());
        }
        for k in 0..4 {
            put(&mut h, 104 + 8 * k, &1f64.to_le_bytes());
        }
        put(&mut h, 168, &544i64.to_le_bytes());
        put(&mut h, 348, &1i32.to_le_bytes());
        for (r, row) in affine.iter().enumerate() {
            for (k, v) in row.iter().enumerate() {
                put(&mut h, 400 + 32 * r + 8 * k, &v.to_le_bytes());
            }
        }
    } else {
        put(&mut h, 0, &348i32.to_le_bytes());
        put(&mut h, 40, &3i16.to_le_bytes());
        for (k, d) in dims.iter().enumerate() {
            put(&mut h, 42 + 2 * k, &(*d as i16).to_le_bytes());
        }
        for k in 4..8 {
            put(&mut h, 40 + 2 * k, &1i16.to_le_bytes());
        }
        put(&mut h, 70, &datatype.to_le_bytes());
        put(&mut h, 72, &bitpix(datatype).to_le_bytes());
        for k in 0..4 {
            put(&mut h, 76 + 4 * k, &1f32.to_le_bytes());
        }
        put(&mut h, 108, &352f32.to_le_bytes());
        put(&mut h, 254, &1i16.to_le_bytes());
        for (r, row) in affine.iter().enumerate() {
            for (k, v) in row.iter().enumerate() {
                put(&mut h, 280 + 16 * r + 4 * k, &(*v as f32).to_le_bytes());
            }
        }
        put(&mut h, 344, b"n+1\0");
    }
    h.extend_from_slice(data);
    h
}

/// Gzip-compresses bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Writes a u8 volume (indexed `[x][y][z]` through `f`) as `.nii.gz` (or `.nii`, by name).
pub fn write_u8_volume(path: &Path, dims: [usize; 3], f: impl Fn(usize, usize, usize) -> u8) {
    let mut data = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                data.push(f(x, y, z));
            }
        }
    }
    let bytes = encode_nifti(dims, 2, &data, &RAS_1MM, false);
    let bytes = if path.to_string_lossy().ends_with(".gz") {
        gzip(&bytes)
    } else {
        bytes
    };
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("create parent folder");
    }
    std::fs::write(path, bytes).expect("write volume");
}

/// Writes an RGB image (format from the extension) with a simple gradient.
pub fn write_rgb(path: &Path, w: u32, h: u32) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("create parent folder");
    }
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
    img.save(path).expect("write image");
}

/// Writes a 0/255 mask whose foreground is the rectangle `[x0, x1) x [y0, y1)`.
pub fn write_mask(path: &Path, w: u32, h: u32, rect: (u32, u32, u32, u32)) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("create parent folder");
    }
    let (x0, y0, x1, y1) = rect;
    let img = GrayImage::from_fn(w, h, |x, y| {
        Luma([if x >= x0 && x < x1 && y >= y0 && y < y1 {
            255
        } else {
            0
        }])
    });
    img.save(path).expect("write mask");
}
