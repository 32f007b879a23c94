//! NIfTI volumes: NIfTI-1 and NIfTI-2, gzipped or not (detected from the bytes, not the
//! name), any voxel type the `nifti` crate decodes, `scl_slope`/`scl_inter` applied.
//!
//! The file is read (and inflated) whole first, and the header's claimed data size is checked
//! against the bytes actually present before anything is allocated from it, so a truncated
//! file or a header that lies about its size is a clear error, never a panic or a huge
//! allocation. NIfTI-1 headers are parsed by the `nifti` crate; NIfTI-2 headers (which it
//! does not read) are parsed here and handed to the same voxel decoder. 4-D files yield their
//! first 3-D volume.
//!
//! The affine comes from the sform (if `sform_code > 0`), else the qform, else the voxel
//! sizes; orientation and slicing are in [`crate::volume_ops`] (re-exported here).

use std::io::Read;
use std::path::Path;

use ndarray::{Array3, Ix3};
use nifti::{Endianness, InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiType};

use crate::error::{DataError, Result};
pub use crate::volume_ops::{
    axcodes, axial_axis, axial_slice, normalize_percentile, normalize_percentile_u8, Affine,
};

/// What a header says, without the voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeHeader {
    /// 1 or 2.
    pub version: u8,
    /// Size of the first three axes.
    pub dims: [usize; 3],
    /// NIfTI datatype name, e.g. `Uint8`.
    pub datatype: String,
    pub affine: Affine,
}

/// A decoded volume indexed `[i, j, k]` in voxel order.
#[derive(Debug, Clone)]
pub struct Volume {
    pub header: VolumeHeader,
    pub data: Array3<f32>,
}

/// The parsed header plus what is needed to decode the voxels.
struct Parsed {
    info: VolumeHeader,
    /// A NIfTI-1 header describing only the first 3-D volume, for the `nifti` decoder.
    decode: NiftiHeader,
    vox_offset: usize,
    nbytes: usize,
}

pub(crate) fn inflate(path: &Path, raw: Vec<u8>, limit: Option<usize>) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let res = match limit {
        Some(n) => dec.take(n as u64).read_to_end(&mut out),
        None => {
            let mut dec = dec;
            dec.read_to_end(&mut out)
        }
    };
    match res {
        Ok(_) => Ok(out),
        // A header-only read of a valid stream stops early; that is fine.
        Err(_) if limit.is_some() && out.len() >= limit.unwrap_or(0) => Ok(out),
        Err(e) => Err(DataError::nifti(
            path,
            format!("gzip stream is truncated or corrupt ({e})"),
        )),
    }
}

fn quaternion_affine(b: f64, c: f64, d: f64, off: [f64; 3], pixdim: [f64; 4]) -> Affine {
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - b * b - c * c,
        ],
    ];
    let qfac = if pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let s = [pixdim[1], pixdim[2], pixdim[3] * qfac];
    let mut m = [[0.0; 4]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * s[j];
        }
        m[i][3] = off[i];
    }
    m
}

/// The affine from sform, qform or voxel sizes, in that order of preference.
fn affine(
    sform: (i32, [[f64; 4]; 3]),
    qform: (i32, [f64; 3], [f64; 3]),
    pixdim: [f64; 4],
) -> Affine {
    if sform.0 > 0 {
        return sform.1;
    }
    if qform.0 > 0 {
        let [b, c, d] = qform.1;
        return quaternion_affine(b, c, d, qform.2, pixdim);
    }
    let p = |v: f64| if v > 0.0 { v } else { 1.0 };
    [
        [p(pixdim[1]), 0.0, 0.0, 0.0],
        [0.0, p(pixdim[2]), 0.0, 0.0],
        [0.0, 0.0, p(pixdim[3]), 0.0],
    ]
}

fn parse_v1(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    let h = NiftiHeader::from_reader(bytes)
        .map_err(|e| DataError::nifti(path, format!("bad NIfTI-1 header ({e})")))?;
    if &h.magic[..3] == b"ni1" {
        return Err(DataError::nifti(
            path,
            "is the header of a .hdr/.img pair; convert it to a single .nii file",
        ));
    }
    let dims = h
        .dim()
        .map_err(|e| DataError::nifti(path, format!("bad dimensions ({e})")))?;
    let mut d3 = [1usize; 3];
    for (k, &d) in dims.iter().take(3).enumerate() {
        d3[k] = d as usize;
    }
    let srow = |r: [f32; 4]| r.map(f64::from);
    let aff = affine(
        (
            h.sform_code as i32,
            [srow(h.srow_x), srow(h.srow_y), srow(h.srow_z)],
        ),
        (
            h.qform_code as i32,
            [h.quatern_b, h.quatern_c, h.quatern_d].map(f64::from),
            [h.quatern_x, h.quatern_y, h.quatern_z].map(f64::from),
        ),
        [h.pixdim[0], h.pixdim[1], h.pixdim[2], h.pixdim[3]].map(f64::from),
    );
    let vox_offset = h.vox_offset.max(352.0) as usize;
    finish(
        path,
        1,
        d3,
        h.datatype,
        h.bitpix,
        h.scl_slope,
        h.scl_inter,
        h.endianness,
        vox_offset,
        aff,
    )
}

/// Reads a NIfTI-2 header (540 bytes) in the given byte order.
fn parse_v2(path: &Path, b: &[u8], e: Endianness) -> Result<Parsed> {
    if b.len() < 540 {
        return Err(DataError::nifti(
            path,
            "file ends inside its NIfTI-2 header",
        ));
    }
    let mut a2 = [0u8; 2];
    let mut a4 = [0u8; 4];
    let mut a8 = [0u8; 8];
    let i16_at = |o: usize, a: &mut [u8; 2]| {
        a.copy_from_slice(&b[o..o + 2]);
        if e == Endianness::Little {
            i16::from_le_bytes(*a)
        } else {
            i16::from_be_bytes(*a)
        }
    };
    let i32_at = |o: usize, a: &mut [u8; 4]| {
        a.copy_from_slice(&b[o..o + 4]);
        if e == Endianness::Little {
            i32::from_le_bytes(*a)
        } else {
            i32::from_be_bytes(*a)
        }
    };
    let i64_at = |o: usize, a: &mut [u8; 8]| {
        a.copy_from_slice(&b[o..o + 8]);
        if e == Endianness::Little {
            i64::from_le_bytes(*a)
        } else {
            i64::from_be_bytes(*a)
        }
    };
    let f64_at = |o: usize, a: &mut [u8; 8]| f64::from_bits(i64_at(o, a) as u64);
    if &b[4..7] != b"n+2" {
        return Err(DataError::nifti(
            path,
            "NIfTI-2 magic is not `n+2` (only single-file .nii is read)",
        ));
    }
    let datatype = i16_at(12, &mut a2);
    let bitpix = i16_at(14, &mut a2);
    let ndim = i64_at(16, &mut a8);
    if !(1..=7).contains(&ndim) {
        return Err(DataError::nifti(
            path,
            format!("dim[0] is {ndim}, must be 1..=7"),
        ));
    }
    let mut d3 = [1usize; 3];
    for (k, slot) in d3.iter_mut().enumerate().take(ndim.min(3) as usize) {
        let d = i64_at(24 + 8 * k, &mut a8);
        if d < 1 || d > u16::MAX as i64 {
            return Err(DataError::nifti(path, format!("dim[{}] is {d}", k + 1)));
        }
        *slot = d as usize;
    }
    let pixdim = [0, 1, 2, 3].map(|k| f64_at(104 + 8 * k, &mut a8));
    let vox_offset = i64_at(168, &mut a8).max(544) as usize;
    let slope = f64_at(176, &mut a8) as f32;
    let inter = f64_at(184, &mut a8) as f32;
    let qform = i32_at(344, &mut a4);
    let sform = i32_at(348, &mut a4);
    let quat = [352, 360, 368].map(|o| f64_at(o, &mut a8));
    let qoff = [376, 384, 392].map(|o| f64_at(o, &mut a8));
    let row = |o: usize, a: &mut [u8; 8]| [0, 1, 2, 3].map(|k| f64_at(o + 8 * k, a));
    let srow = [row(400, &mut a8), row(432, &mut a8), row(464, &mut a8)];
    let aff = affine((sform, srow), (qform, quat, qoff), pixdim);
    finish(
        path, 2, d3, datatype, bitpix, slope, inter, e, vox_offset, aff,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    path: &Path,
    version: u8,
    dims: [usize; 3],
    datatype: i16,
    bitpix: i16,
    slope: f32,
    inter: f32,
    endianness: Endianness,
    vox_offset: usize,
    affine: Affine,
) -> Result<Parsed> {
    let ty: NiftiType = num_from_i16(datatype)
        .ok_or_else(|| DataError::nifti(path, format!("unknown datatype code {datatype}")))?;
    if matches!(
        ty,
        NiftiType::Rgb24
            | NiftiType::Rgba32
            | NiftiType::Complex64
            | NiftiType::Complex128
            | NiftiType::Complex256
    ) {
        return Err(DataError::nifti(
            path,
            format!(
                "{ty:?} voxels are not supported (expected a scalar intensity or label volume)"
            ),
        ));
    }
    let per_voxel = ty.size_of();
    // The voxel size is the datatype's: a header whose bitpix disagrees (it is redundant in
    // NIfTI, and some writers leave it 0) is decoded by its datatype.
    let _ = bitpix;
    let bitpix = (8 * per_voxel) as i16;
    let nbytes = dims
        .iter()
        .try_fold(per_voxel, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::nifti(path, format!("dimensions {dims:?} overflow")))?;
    let mut decode = NiftiHeader {
        datatype,
        bitpix,
        scl_slope: slope,
        scl_inter: inter,
        endianness,
        ..NiftiHeader::default()
    };
    decode.dim = [
        3,
        dims[0] as u16,
        dims[1] as u16,
        dims[2] as u16,
        1,
        1,
        1,
        1,
    ];
    Ok(Parsed {
        info: VolumeHeader {
            version,
            dims,
            datatype: format!("{ty:?}"),
            affine,
        },
        decode,
        vox_offset,
        nbytes,
    })
}

/// `NiftiType` for a datatype code, through the header's own validation.
fn num_from_i16(code: i16) -> Option<NiftiType> {
    let h = NiftiHeader {
        datatype: code,
        ..NiftiHeader::default()
    };
    h.data_type().ok()
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    if bytes.len() < 4 {
        return Err(DataError::nifti(
            path,
            "file is too short to hold a NIfTI header",
        ));
    }
    let word = [bytes[0], bytes[1], bytes[2], bytes[3]];
    match (i32::from_le_bytes(word), i32::from_be_bytes(word)) {
        (348, _) | (_, 348) => parse_v1(path, bytes),
        (540, _) => parse_v2(path, bytes, Endianness::Little),
        (_, 540) => parse_v2(path, bytes, Endianness::Big),
        _ => Err(DataError::nifti(
            path,
            "not a NIfTI file (sizeof_hdr is neither 348 nor 540)",
        )),
    }
}

pub(crate) fn read_raw(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Reads only the header (inflating just its first bytes).
pub fn read_header(path: &Path) -> Result<VolumeHeader> {
    let raw = read_raw(path)?;
    let bytes = inflate(path, raw, Some(544))?;
    Ok(parse(path, &bytes)?.info)
}

/// Reads a whole volume as f32 with the scaling applied.
pub fn read_volume(path: &Path) -> Result<Volume> {
    let bytes = inflate(path, read_raw(path)?, None)?;
    let p = parse(path, &bytes)?;
    let have = bytes.len().saturating_sub(p.vox_offset);
    if have < p.nbytes {
        let d = p.info.dims;
        return Err(DataError::nifti(
            path,
            format!(
                "header declares {}x{}x{} {} voxels ({} bytes from offset {}) but the file holds only {} bytes there",
                d[0], d[1], d[2], p.info.datatype, p.nbytes, p.vox_offset, have
            ),
        ));
    }
    let data = &bytes[p.vox_offset..p.vox_offset + p.nbytes];
    let vol = InMemNiftiVolume::from_reader(data, &p.decode)
        .map_err(|e| DataError::nifti(path, format!("cannot decode voxels ({e})")))?;
    let arr = vol.into_ndarray::<f32>().map_err(|e| {
        DataError::nifti(
            path,
            format!("cannot convert {} voxels ({e})", p.info.datatype),
        )
    })?;
    let arr = arr
        .into_dimensionality::<Ix3>()
        .map_err(|e| DataError::nifti(path, format!("not a 3-D volume ({e})")))?;
    Ok(Volume {
        header: p.info,
        data: arr.as_standard_layout().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{encode_nifti, gzip, RAS_1MM};

    fn cube() -> Vec<u8> {
        (0..4 * 3 * 2).map(|v| v as u8).collect()
    }

    #[test]
    fn reads_nifti1_and_nifti2_plain_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        for v2 in [false, true] {
            for gz in [false, true] {
                let mut bytes = encode_nifti([4, 3, 2], 2, &cube(), &RAS_1MM, v2);
                if gz {
                    bytes = gzip(&bytes);
                }
                let p = dir.path().join(format!(
                    "v{}{}.nii{}",
                    v2 as u8,
                    gz as u8,
                    if gz { ".gz" } else { "" }
                ));
                std::fs::write(&p, bytes).unwrap();
                let vol = read_volume(&p).unwrap();
                assert_eq!(vol.data.shape(), &[4, 3, 2]);
                // NIfTI is x-fastest: voxel (1, 2, 1) = 1 + 4*2 + 12*1.
                assert_eq!(vol.data[[1, 2, 1]], 21.0);
                assert_eq!(axcodes(&vol.header.affine), ['R', 'A', 'S']);
                assert_eq!(read_header(&p).unwrap().dims, [4, 3, 2]);
            }
        }
    }

    #[test]
    fn scaling_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_nifti([2, 1, 1], 4, &[10, 0, 20, 0], &RAS_1MM, false);
        bytes[112..116].copy_from_slice(&2.0f32.to_le_bytes());
        bytes[116..120].copy_from_slice(&1.0f32.to_le_bytes());
        let p = dir.path().join("s.nii");
        std::fs::write(&p, bytes).unwrap();
        let vol = read_volume(&p).unwrap();
        assert_eq!(
            vol.data.iter().copied().collect::<Vec<_>>(),
            vec![21.0, 41.0]
        );
    }
}
