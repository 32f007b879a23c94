//! Orientation, axial slicing and intensity normalisation of decoded volumes.
//!
//! [`axcodes`] names the world direction (RAS+) each voxel axis points to. [`axial_slice`]
//! cuts along the axis closest to S/I and lays the slice out as seen from above: anterior at
//! the top, the patient's right on the image's right, whatever the volume's storage order.

use ndarray::{Array2, Array3, ArrayView3, ArrayViewMut3, Axis};

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

/// Where pixel `(row, col)` of an axial slice comes from in the slice's own 2-D view (the
/// volume with `axis` removed): [`axial_slice`] reads through it, [`put_axial_slice`] writes
/// back through it. The slice is `(rows, cols)` of [`SliceLayout::shape`].
#[derive(Debug, Clone, Copy)]
pub struct SliceLayout {
    rows: usize,
    cols: usize,
    /// The column axis points left (or posterior): columns are flipped.
    flip_cols: bool,
    /// The row axis points anterior: rows are flipped so that anterior is at the top.
    flip_rows: bool,
    /// The view's first axis gives the rows (not the columns).
    swap: bool,
}

impl SliceLayout {
    /// The layout of the slices of a volume of `dims` cut along `axis`.
    pub fn new(dims: [usize; 3], affine: &Affine, axis: usize) -> Self {
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
        let (col_dir, row_dir, swap) = if da.0 == 0 || db.0 != 0 {
            (da.1, db.1, false)
        } else {
            (db.1, da.1, true)
        };
        let (na, nb) = (dims[others[0]], dims[others[1]]);
        let (cols, rows) = if swap { (nb, na) } else { (na, nb) };
        Self {
            rows,
            cols,
            flip_cols: col_dir < 0.0,
            // Anterior (positive) at the top: row 0 is the largest coordinate.
            flip_rows: row_dir >= 0.0,
            swap,
        }
    }

    /// `(rows, cols)` of a slice.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The index in the slice's 2-D view of pixel `(r, c)`.
    pub fn source(&self, r: usize, c: usize) -> [usize; 2] {
        let ci = if self.flip_cols { self.cols - 1 - c } else { c };
        let ri = if self.flip_rows { self.rows - 1 - r } else { r };
        if self.swap {
            [ri, ci]
        } else {
            [ci, ri]
        }
    }
}

fn dims_of<T>(vol: &ArrayView3<T>) -> [usize; 3] {
    [vol.shape()[0], vol.shape()[1], vol.shape()[2]]
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
    let layout = SliceLayout::new(dims_of(&vol), affine, axis);
    let s = vol.index_axis(Axis(axis), index);
    Array2::from_shape_fn(layout.shape(), |(r, c)| s[layout.source(r, c)])
}

/// The inverse of [`axial_slice`]: writes `slice` (laid out as [`axial_slice`] returns it)
/// into slice `index` along `axis` of `vol`.
pub fn put_axial_slice<T: Copy>(
    mut vol: ArrayViewMut3<T>,
    affine: &Affine,
    axis: usize,
    index: usize,
    slice: &Array2<T>,
) {
    let layout = SliceLayout::new(dims_of(&vol.view()), affine, axis);
    assert_eq!(
        slice.dim(),
        layout.shape(),
        "the slice's shape is not the volume's axial shape"
    );
    let mut s = vol.index_axis_mut(Axis(axis), index);
    for ((r, c), &v) in slice.indexed_iter() {
        s[layout.source(r, c)] = v;
    }
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

    /// Every storage order an axis-aligned affine can give (each axis permutation, each sign):
    /// writing every slice back through [`put_axial_slice`] rebuilds the volume exactly.
    #[test]
    fn put_axial_slice_inverts_axial_slice_in_every_orientation() {
        let dims = [4usize, 3, 5];
        let vol = Array3::from_shape_fn(dims, |(x, y, z)| (x * 100 + y * 10 + z) as i32);
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for perm in perms {
            for signs in 0..8u32 {
                let mut affine = [[0.0; 4]; 3];
                for (voxel_axis, &world) in perm.iter().enumerate() {
                    let neg = signs >> voxel_axis & 1 == 1;
                    affine[world][voxel_axis] = if neg { -2.0 } else { 2.0 };
                }
                let axis = axial_axis(&affine);
                let mut back = Array3::<i32>::from_elem(dims, -1);
                for z in 0..dims[axis] {
                    let s = axial_slice(vol.view(), &affine, axis, z);
                    put_axial_slice(back.view_mut(), &affine, axis, z, &s);
                }
                assert_eq!(back, vol, "perm {perm:?} signs {signs:03b}");
            }
        }
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
