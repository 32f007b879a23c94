//! From 8-bit pixels to network input. The trainer does the same on the device from a
//! [`crate::cache::U8Batch`]; [`normalize`] is the CPU reference it is tested against.
//!
//! - [`PixelScale::MeanStd`]: `(x as f32 / 255.0 - mean[c]) / std[c]`, computed in that order.
//! - [`PixelScale::MinMax`]: per image, over all channels and pixels,
//!   `(x - min) as f32 / (max - min) as f32` (0 everywhere for a constant image).

use image::RgbImage;
use ndarray::{Array3, Array4, ArrayView3, ArrayViewMut3, Axis, Zip};

use crate::preset::{PixelScale, Preprocess};

/// (3, H, W) planes of a packed RGB image.
pub fn to_chw(image: &RgbImage) -> Array3<u8> {
    let (w, h) = image.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut out = Array3::<u8>::zeros((3, h, w));
    write_chw(
        image.as_raw(),
        out.as_slice_mut().expect("fresh arrays are contiguous"),
        w * h,
    );
    out
}

/// Writes packed RGB (`pixels` pixels) into three consecutive planes of `out`.
pub(crate) fn write_chw(packed: &[u8], out: &mut [u8], pixels: usize) {
    let (r, rest) = out.split_at_mut(pixels);
    let (g, b) = rest.split_at_mut(pixels);
    for (i, px) in packed.chunks_exact(3).take(pixels).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
}

/// The f32 value of each u8 value per channel under mean/std.
fn mean_std_table(pre: &Preprocess) -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, row) in t.iter_mut().enumerate() {
        for (v, o) in row.iter_mut().enumerate() {
            *o = (v as f32 / 255.0 - pre.mean[c]) / pre.std[c];
        }
    }
    t
}

fn normalize_into(
    src: ArrayView3<u8>,
    mut dst: ArrayViewMut3<f32>,
    pre: &Preprocess,
    table: &[[f32; 256]; 3],
) {
    match pre.scale {
        PixelScale::MeanStd => {
            for (c, (s, d)) in src.outer_iter().zip(dst.outer_iter_mut()).enumerate() {
                let row = &table[c.min(2)];
                Zip::from(d).and(s).for_each(|d, &s| *d = row[s as usize]);
            }
        }
        PixelScale::MinMax => {
            let (lo, hi) = src
                .iter()
                .fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if hi <= lo {
                dst.fill(0.0);
                return;
            }
            let span = (hi - lo) as f32;
            Zip::from(dst)
                .and(src)
                .for_each(|d, &s| *d = (s - lo) as f32 / span);
        }
    }
}

/// One image, (3, H, W) u8 -> (3, H, W) f32.
pub fn normalize_image(image: ArrayView3<u8>, pre: &Preprocess) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros(image.raw_dim());
    normalize_into(image, out.view_mut(), pre, &mean_std_table(pre));
    out
}

/// A batch, (B, 3, H, W) u8 -> (B, 3, H, W) f32, each image normalised by `pre.scale`.
pub fn normalize(batch_images: &Array4<u8>, pre: &Preprocess) -> Array4<f32> {
    let table = mean_std_table(pre);
    let mut out = Array4::<f32>::zeros(batch_images.raw_dim());
    for (s, d) in batch_images
        .axis_iter(Axis(0))
        .zip(out.axis_iter_mut(Axis(0)))
    {
        normalize_into(s, d, pre, &table);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_is_the_formula() {
        let pre = Preprocess::default();
        let x = Array4::from_shape_fn((2, 3, 2, 2), |(b, c, y, x)| {
            (b * 50 + c * 20 + y * 7 + x) as u8
        });
        let out = normalize(&x, &pre);
        for ((b, c, y, xx), v) in out.indexed_iter() {
            let want = (x[[b, c, y, xx]] as f32 / 255.0 - pre.mean[c]) / pre.std[c];
            assert_eq!(*v, want);
        }
    }

    #[test]
    fn min_max_is_the_formula_per_image() {
        let pre = Preprocess {
            scale: PixelScale::MinMax,
            ..Preprocess::default()
        };
        let mut x =
            Array4::from_shape_fn((2, 3, 4, 4), |(_, c, y, x)| (10 + c * 30 + y * 4 + x) as u8);
        x.index_axis_mut(Axis(0), 1).fill(7);
        let out = normalize(&x, &pre);
        let (lo, hi) = (10.0f32, (10 + 60 + 15) as f32);
        for ((c, y, xx), v) in out.index_axis(Axis(0), 0).indexed_iter() {
            assert_eq!(*v, (x[[0, c, y, xx]] as f32 - lo) / (hi - lo));
        }
        assert_eq!(out[[0, 0, 0, 0]], 0.0);
        assert_eq!(out[[0, 2, 3, 3]], 1.0);
        assert!(
            out.index_axis(Axis(0), 1).iter().all(|&v| v == 0.0),
            "constant image"
        );
    }

    #[test]
    fn chw_splits_channels() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let a = to_chw(&img);
        assert_eq!(a.shape(), &[3, 2, 3]);
        assert_eq!(a[[0, 1, 2]], 2);
        assert_eq!(a[[1, 1, 2]], 1);
        assert_eq!(a[[2, 0, 0]], 9);
    }
}
