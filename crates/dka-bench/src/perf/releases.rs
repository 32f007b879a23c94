//! Synthetic releases at real sizes for `dka bench data`: an ISIC-2019 tree of textured JPEGs
//! and BraTS-2020-like cases (4 modalities + seg, gzipped NIfTI), written in the releases'
//! layouts so that the real loaders read them.
use anyhow::Context;
use std::path::Path;

/// A smooth, textured 8-bit value (a skin-photo stand-in that compresses like one).
fn texture(x: u32, y: u32, c: u32, seed: u32) -> u8 {
    let (fx, fy) = (x as f32, y as f32);
    let base = 150.0 + 50.0 * (fx / 97.0 + seed as f32).sin() * (fy / 71.0).cos() - 30.0 * c as f32;
    let h =
        (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ seed.wrapping_mul(83_492_791))
            % 23;
    (base + h as f32).clamp(0.0, 255.0) as u8
}

/// ISIC-2019 release layout with `n` JPEGs of `w` x `h`.
pub fn synth_isic(root: &Path, n: usize, w: u32, h: u32) -> anyhow::Result<()> {
    let input = root.join("ISIC_2019_Training_Input");
    std::fs::create_dir_all(&input)?;
    let mut csv = String::from("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n");
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(n.div_ceil(4).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|ids| {
                let input = input.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    for i in ids {
                        let img = image::RgbImage::from_fn(w, h, |x, y| {
                            image::Rgb([0, 1, 2].map(|c| texture(x, y, c, i as u32)))
                        });
                        let p = input.join(format!("ISIC_{i:07}.jpg"));
                        img.save(&p).with_context(|| p.display().to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("image writer panicked"))??;
        }
        Ok(())
    })?;
    for i in 0..n {
        let cells: Vec<&str> = (0..9)
            .map(|j| if j == i % 8 { "1.0" } else { "0.0" })
            .collect();
        csv.push_str(&format!("ISIC_{i:07},{}\n", cells.join(",")));
    }
    std::fs::write(root.join("ISIC_2019_Training_GroundTruth.csv"), csv)?;
    Ok(())
}

/// One BraTS-2020-like case: int16 modalities with a smooth brain and a spherical tumour,
/// uint8 seg (1 core, 2 oedema, 4 enhancing rim), gzipped like the release.
pub fn synth_brats_case(root: &Path, case: usize, dims: [usize; 3]) -> anyhow::Result<()> {
    use dka_data::testing::{encode_nifti, gzip, RAS_1MM};
    let id = format!("BraTS20_Training_{:03}", case + 1);
    let dir = root.join(&id);
    std::fs::create_dir_all(&dir)?;
    let [nx, ny, nz] = dims;
    let c = [nx as f32 / 2.0, ny as f32 / 2.0, nz as f32 / 2.0];
    let r_brain = [nx as f32 * 0.4, ny as f32 * 0.45, nz as f32 * 0.4];
    let t = [
        c[0] + nx as f32 * 0.1 * ((case % 3) as f32 - 1.0),
        c[1],
        c[2] + nz as f32 * 0.05,
    ];
    let r_t = nx.min(ny).min(nz) as f32 * 0.2;
    let n = nx * ny * nz;
    let mut seg = Vec::with_capacity(n);
    let mut base = Vec::with_capacity(n);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let p = [x as f32, y as f32, z as f32];
                let e: f32 = (0..3).map(|k| ((p[k] - c[k]) / r_brain[k]).powi(2)).sum();
                let d = (0..3).map(|k| (p[k] - t[k]).powi(2)).sum::<f32>().sqrt() / r_t;
                let label = if e >= 1.0 || d >= 1.0 {
                    0
                } else if d < 0.4 {
                    1
                } else if d < 0.7 {
                    4
                } else {
                    2
                };
                seg.push(label);
                let v = if e < 1.0 {
                    400.0
                        + 120.0 * (p[0] / 9.0).sin()
                        + 90.0 * (p[1] / 13.0).cos()
                        + 60.0 * (p[2] / 7.0).sin()
                } else {
                    0.0
                };
                base.push(v + if label != 0 { 300.0 * (1.0 - d) } else { 0.0 });
            }
        }
    }
    for (k, m) in ["flair", "t1", "t1ce", "t2"].iter().enumerate() {
        let gain = [1.0f32, 0.8, 1.2, 0.9][k];
        let bytes: Vec<u8> = base
            .iter()
            .flat_map(|&v| ((v * gain) as i16).to_le_bytes())
            .collect();
        let nii = gzip(&encode_nifti(dims, 4, &bytes, &RAS_1MM, false));
        std::fs::write(dir.join(format!("{id}_{m}.nii.gz")), nii)?;
    }
    let nii = gzip(&encode_nifti(dims, 2, &seg, &RAS_1MM, false));
    std::fs::write(dir.join(format!("{id}_seg.nii.gz")), nii)?;
    Ok(())
}
