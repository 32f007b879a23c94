//! Orientation, axial slicing and intensity normalisation of decoded volumes.
//!
//! [`axcodes`] names the world direction (RAS+) each voxel axis points to. [`axial_slice`]
//! cuts along the axis closest to S/I and lays the slice out as seen from above: anterior at
//! the top, the patient's right on the image's right, whatever the volume's storage order.

use ndarray::{Array2, Array3, ArrayView3, Axis};

/// A voxel-to-world affine (3 rows of 4).
pub type Affine = [[f64; 4]; 3];

/// RAS+ axis codes of the voxel axes (nibabel's `aff2axcodes` for near-axis-aligned affines).
pub fn axcodes(affine: &Affine) -> [char; 3] {
    let mut out = ['?'; 3];
    for (j, code) in out.iter_mut().enumerate() {
        let col = [affine[0][j], affine[1][j], affine[2][j]];
        let w = (0..3)
            .max_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs()))
            .unwrap_or(0);
        *code = match (w, col[w] >= 0.0) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (_, true) => 'S',
            (_, false) => 'I',
        };
    }
    out
}

/// The voxel axis that points most along S/I (the last axis when the affine is degenerate).
pub fn axial_axis(affine: &Affine) -> usize {
    (0..3)
        .rev()
        .max_by(|&a, &b| affine[2][a].abs().total_cmp(&affine[2][b].abs()))
        .unwrap_or(2)
}

/// Slice `index` along `axis`, laid out (rows, cols) as seen from above: anterior at the top,
/// the patient's right on the right (the in-plane axes are flipped where the affine says they
/// point left or posterior).
pub fn axial_slice<T: Copy>(
    vol: ArrayView3<T>,
    affine: &Affine,
    axis: usize,
    index: usize,
) -> Array2<T> {
    let s = vol.index_axis(Axis(axis), index);
    // Remaining axes in order: (a, b); a -> columns, b -> rows.
    let others: Vec<usize> = (0..3).filter(|&k| k != axis).collect();
    let dir = |k: usize| {
        let col = [affine[0][k], affine[1][k]];
        if col[0].abs() >= col[1].abs() {
            (0, col[0])
        } else {
            (1, col[1])
        }
    };
    let (da, db) = (dir(others[0]), dir(others[1]));
    // Make the column axis the left-right one.
    let (col_ax, row_ax, col_dir, row_dir, swap) = if da.0 == 0 || db.0 != 0 {
        (0, 1, da.1, db.1, false)
    } else {
        (1, 0, db.1, da.1, true)
    };
    let (nc, nr) = (s.shape()[col_ax], s.shape()[row_ax]);
    Array2::from_shape_fn((nr, nc), |(r, c)| {
        let ci = if col_dir >= 0.0 { c } else { nc - 1 - c };
        // Anterior (positive) at the top: row 0 is the largest coordinate.
        let ri = if row_dir >= 0.0 { nr - 1 - r } else { r };
        if swap {
            s[[ri, ci]]
        } else {
            s[[ci, ri]]
        }
    })
}

/// The values at the [lo, hi] percentiles of the non-zero finite voxels (all finite voxels
/// if none is non-zero), and the span between them (1 when they coincide); `None` when no
/// voxel is finite. Skull-stripped MRI has a zero background, hence the non-zero rule.
fn percentile_range(data: &Array3<f32>, lo: f64, hi: f64) -> Option<(f32, f32)> {
    let mut v: Vec<f32> = data
        .iter()
        .copied()
        .filter(|x| *x != 0.0 && x.is_finite())
        .collect();
    if v.is_empty() {
        v = data.iter().copied().filter(|x| x.is_finite()).collect();
    }
    if v.is_empty() {
        return None;
    }
    let pick = |v: &mut Vec<f32>, q: f64| {
        let last = v.len() - 1;
        let k = ((last as f64) * q / 100.0).round() as usize;
        *v.select_nth_unstable_by(k.min(last), f32::total_cmp).1
    };
    let (a, b) = (pick(&mut v, lo), pick(&mut v, hi));
    Some((a, if b > a { b - a } else { 1.0 }))
}

/// Maps the [lo, hi] percentiles of the non-zero voxels (all voxels if none is non-zero) to
/// [0, 1] and clips.
pub fn normalize_percentile(data: &mut Array3<f32>, lo: f64, hi: f64) {
    let Some((a, span)) = percentile_range(data, lo, hi) else {
        data.fill(0.0);
        return;
    };
    data.mapv_inplace(|x| {
        if x.is_finite() {
            ((x - a) / span).clamp(0.0, 1.0)
        } else {
            0.0
        }
    });
}

/// [`normalize_percentile`] to 8 bits: `round(255 * clip((x - p_lo) / (p_hi - p_lo), 0, 1))`.
pub fn normalize_percentile_u8(data: &Array3<f32>, lo: f64, hi: f64) -> Array3<u8> {
    let Some((a, span)) = percentile_range(data, lo, hi) else {
        return Array3::zeros(data.raw_dim());
    };
    data.mapv(|x| {
        if x.is_finite() {
            (((x - a) / span).clamp(0.0, 1.0) * 255.0).round() as u8
        } else {
            0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RAS_1MM;

    #[test]
    fn axial_slice_puts_anterior_on_top_and_right_on_the_right() {
        let vol = Array3::from_shape_fn((3, 2, 2), |(x, y, z)| (x * 100 + y * 10 + z) as i32);
        let s = axial_slice(vol.view(), &RAS_1MM, 2, 1);
        assert_eq!(s.shape(), &[2, 3]);
        assert_eq!(s[[0, 0]], 11); // top-left: x=0 (left), y=1 (anterior)
        let mut las = RAS_1MM;
        las[0][0] = -1.0;
        let s = axial_slice(vol.view(), &las, 2, 1);
        assert_eq!(s[[0, 0]], 211);
    }

    #[test]
    fn percentile_normalisation_maps_to_unit_range() {
        let mut a = Array3::from_shape_fn((10, 10, 1), |(x, y, _)| (x * 10 + y) as f32);
        normalize_percentile(&mut a, 0.5, 99.5);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(a[[9, 9, 0]], 1.0);
    }

    #[test]
    fn percentile_normalisation_to_u8_rounds_the_unit_range() {
        let a = Array3::from_shape_fn((10, 10, 1), |(x, y, _)| (x * 10 + y) as f32);
        let mut f = a.clone();
        normalize_percentile(&mut f, 0.5, 99.5);
        let u = normalize_percentile_u8(&a, 0.5, 99.5);
        for (q, v) in u.iter().zip(f.iter()) {
            assert_eq!(*q, (v * 255.0).round() as u8);
        }
        assert_eq!(u[[9, 9, 0]], 255);
    }
}
