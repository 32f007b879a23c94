//! Writing a volume in the image space of another (a predicted label map or class
//! probabilities beside the scan they were predicted from), as MONAI's `SaveImage` keeps the
//! input's affine.
//!
//! The reference's own header is copied byte for byte and only the fields that describe the
//! new voxels are changed (dimensions, datatype, scaling, offset, intent), so its sform, qform,
//! voxel sizes and units, and therefore its affine, are exactly the input's, for NIfTI-1 and
//! NIfTI-2 headers alike (the `nifti` crate's writer handles NIfTI-1 only), in the reference's
//! byte order.

use std::io::Write;
use std::path::Path;

use ndarray::{Array3, Array4};

use crate::error::{DataError, Result};
use crate::nifti_volume::{inflate, read_header, read_raw};

/// What to write.
#[derive(Debug, Clone, Copy)]
pub enum Voxels<'a> {
    /// A label map `[i, j, k]` (uint8, NIfTI intent "label").
    Labels(&'a Array3<u8>),
    /// Per-class maps `[i, j, k, c]` (float32, 4-D with the classes on the fourth axis).
    Maps(&'a Array4<f32>),
}

impl Voxels<'_> {
    fn dims3(&self) -> [usize; 3] {
        let s = match self {
            Voxels::Labels(a) => a.shape(),
            Voxels::Maps(a) => a.shape(),
        };
        [s[0], s[1], s[2]]
    }
}

/// NIfTI datatype codes and intents used here.
const UINT8: i16 = 2;
const FLOAT32: i16 = 16;
const INTENT_LABEL: i16 = 1002;

#[derive(Clone, Copy, PartialEq)]
enum Order {
    Little,
    Big,
}

/// A header being patched in its own byte order.
struct Patch<'a> {
    b: &'a mut [u8],
    order: Order,
}

impl Patch<'_> {
    fn put(&mut self, at: usize, le: &[u8], be: &[u8]) {
        let v = if self.order == Order::Little { le } else { be };
        self.b[at..at + v.len()].copy_from_slice(v);
    }
    fn i16(&mut self, at: usize, v: i16) {
        self.put(at, &v.to_le_bytes(), &v.to_be_bytes());
    }
    fn i32(&mut self, at: usize, v: i32) {
        self.put(at, &v.to_le_bytes(), &v.to_be_bytes());
    }
    fn i64(&mut self, at: usize, v: i64) {
        self.put(at, &v.to_le_bytes(), &v.to_be_bytes());
    }
    fn f32(&mut self, at: usize, v: f32) {
        self.put(at, &v.to_le_bytes(), &v.to_be_bytes());
    }
    fn f64(&mut self, at: usize, v: f64) {
        self.put(at, &v.to_le_bytes(), &v.to_be_bytes());
    }
}

/// Writes `voxels` to `out` (gzipped when its name ends in `.gz`) with `reference`'s header:
/// same shape on the first three axes (checked), same affine. A 4-D reference gives a 3-D
/// label map (or one 4-D map per class).
pub fn write_like(reference: &Path, out: &Path, voxels: Voxels) -> Result<()> {
    let info = read_header(reference)?;
    if info.dims != voxels.dims3() {
        return Err(DataError::nifti(
            out,
            format!(
                "voxels of shape {:?} cannot take the header of {} ({:?})",
                voxels.dims3(),
                reference.display(),
                info.dims
            ),
        ));
    }
    let bytes = inflate(reference, read_raw(reference)?, Some(544))?;
    let word = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let (v2, order) = match (i32::from_le_bytes(word), i32::from_be_bytes(word)) {
        (348, _) => (false, Order::Little),
        (_, 348) => (false, Order::Big),
        (540, _) => (true, Order::Little),
        _ => (true, Order::Big),
    };
    let len = if v2 { 540 } else { 348 };
    let mut header = bytes[..len].to_vec();
    let (ndim, fourth, datatype, bitpix, intent) = match voxels {
        Voxels::Labels(_) => (3, 1, UINT8, 8, INTENT_LABEL),
        Voxels::Maps(a) => (4, a.shape()[3], FLOAT32, 32, 0),
    };
    let mut p = Patch {
        b: &mut header,
        order,
    };
    if v2 {
        p.i16(12, datatype);
        p.i16(14, bitpix);
        p.i64(16, ndim);
        p.i64(16 + 8 * 4, fourth as i64);
        for k in 5..8 {
            p.i64(16 + 8 * k, 1);
        }
        p.f64(104 + 8 * 4, 1.0);
        p.i64(168, 544);
        p.f64(176, 1.0); // scl_slope
        p.f64(184, 0.0); // scl_inter
        p.f64(192, 0.0); // cal_max
        p.f64(200, 0.0); // cal_min
        p.i32(504, intent as i32);
    } else {
        p.i16(40, ndim as i16);
        p.i16(40 + 2 * 4, fourth as i16);
        for k in 5..8 {
            p.i16(40 + 2 * k, 1);
        }
        p.i16(68, intent);
        p.i16(70, datatype);
        p.i16(72, bitpix);
        p.f32(76 + 4 * 4, 1.0);
        p.f32(108, 352.0);
        p.f32(112, 1.0); // scl_slope
        p.f32(116, 0.0); // scl_inter
        p.f32(124, 0.0); // cal_max
        p.f32(128, 0.0); // cal_min
        header[344..348].copy_from_slice(b"n+1\0");
    }
    // No extensions.
    header.extend_from_slice(&[0, 0, 0, 0]);
    // Voxels in NIfTI order: i fastest, then j, k (and the class last).
    match voxels {
        Voxels::Labels(a) => {
            let t = a.t();
            header.extend(t.iter());
        }
        Voxels::Maps(a) => {
            header.reserve(a.len() * 4);
            for v in a.t().iter() {
                header.extend_from_slice(&match order {
                    Order::Little => v.to_le_bytes(),
                    Order::Big => v.to_be_bytes(),
                });
            }
        }
    }
    let gz = out.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let data = if gz {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(header.len() / 4),
            flate2::Compression::fast(),
        );
        enc.write_all(&header).map_err(|e| DataError::io(out, e))?;
        enc.finish().map_err(|e| DataError::io(out, e))?
    } else {
        header
    };
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, data).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_volume::read_volume;
    use crate::testing::{encode_nifti, gzip};

    /// A label map written over NIfTI-1 and NIfTI-2 references (plain, gzipped; an oblique,
    /// flipped affine) reads back with the reference's affine and the written voxels.
    #[test]
    fn labels_keep_the_references_affine_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let affine = [
            [-0.9, 0.1, 0.0, 90.5],
            [0.0, 1.1, -0.2, -126.0],
            [0.05, 0.0, 1.3, -72.25],
        ];
        let labels = Array3::from_shape_fn((4, 3, 2), |(i, j, k)| ((i + 2 * j + 3 * k) % 4) as u8);
        for v2 in [false, true] {
            for gz in [false, true] {
                let mut bytes = encode_nifti([4, 3, 2], 16, &[0u8; 4 * 3 * 2 * 4], &affine, v2);
                if gz {
                    bytes = gzip(&bytes);
                }
                let reference = dir.path().join(format!("ref{}{}.nii", v2 as u8, gz as u8));
                std::fs::write(&reference, bytes).unwrap();
                let out = dir
                    .path()
                    .join(format!("out{}{}.nii.gz", v2 as u8, gz as u8));
                write_like(&reference, &out, Voxels::Labels(&labels)).unwrap();
                let back = read_volume(&out).unwrap();
                assert_eq!(back.header.affine, read_header(&reference).unwrap().affine);
                assert_eq!(back.header.version, if v2 { 2 } else { 1 });
                assert_eq!(back.header.datatype, "Uint8");
                assert_eq!(back.data, labels.mapv(f32::from));
            }
        }
    }

    #[test]
    fn maps_are_four_d_and_shapes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("ref.nii");
        std::fs::write(
            &reference,
            encode_nifti([2, 2, 2], 2, &[0u8; 8], &crate::testing::RAS_1MM, false),
        )
        .unwrap();
        let maps = Array4::from_shape_fn((2, 2, 2, 3), |(i, j, k, c)| (i + j + k + c) as f32 / 8.0);
        let out = dir.path().join("p.nii");
        write_like(&reference, &out, Voxels::Maps(&maps)).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(i16::from_le_bytes([bytes[40], bytes[41]]), 4);
        assert_eq!(i16::from_le_bytes([bytes[48], bytes[49]]), 3);
        assert_eq!(bytes.len(), 352 + 2 * 2 * 2 * 3 * 4);
        // Voxel (1, 0, 1) of class 2: i fastest, the class slowest.
        let at = 352 + 4 * (1 + 2 * 2 + 8 * 2);
        let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(v, maps[[1, 0, 1, 2]]);
        // The first volume reads back as class 0.
        let back = read_volume(&out).unwrap();
        assert_eq!(back.data, maps.index_axis(ndarray::Axis(3), 0));
        let wrong = Array3::<u8>::zeros((2, 2, 3));
        let e = write_like(&reference, &out, Voxels::Labels(&wrong)).unwrap_err();
        assert!(e.to_string().contains("cannot take the header"), "{e}");
    }
}
