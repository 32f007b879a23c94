//! A small, learnable image-folder dataset (`root/class<c>/<n>.png`, read by the `folder`
//! loader) for the `quick` profiles, `dka data synth` and tests: each class puts a bright disc
//! in its own region of a noisy image (position, size and colour jittered), so a trained model
//! beats chance and an untrained one does not.

use std::path::Path;

use crate::error::{DataError, Result};

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthSpec {
    /// At least 2.
    pub classes: u32,
    /// At least 1.
    pub per_class: u32,
    /// Image side in pixels, at least 16.
    pub size: u32,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            classes: 3,
            per_class: 40,
            size: 64,
            seed: 0,
        }
    }
}

/// splitmix64: a tiny deterministic generator, enough for synthetic pixels.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Writes `classes` x `per_class` images of `size` pixels under `out/class<c>/`.
pub fn write_folder_dataset(out: &Path, spec: &SynthSpec) -> Result<()> {
    if spec.classes < 2 || spec.per_class < 1 || spec.size < 16 {
        return Err(DataError::config(
            "synthetic data needs >= 2 classes, >= 1 image per class, size >= 16",
        ));
    }
    let s = spec.size as f32;
    for c in 0..spec.classes {
        let dir = out.join(format!("class{c}"));
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        // Class centres on a circle around the image centre.
        let angle = std::f32::consts::TAU * c as f32 / spec.classes as f32;
        let (cx, cy) = (0.5 + 0.25 * angle.cos(), 0.5 + 0.25 * angle.sin());
        for n in 0..spec.per_class {
            let mut r =
                Mix(spec.seed ^ ((c as u64) << 32 | n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let (x0, y0) = (
                (cx + 0.08 * (r.next() - 0.5)) * s,
                (cy + 0.08 * (r.next() - 0.5)) * s,
            );
            let rad = s * (0.10 + 0.05 * r.next());
            let tint = [
                0.6 + 0.4 * r.next(),
                0.6 + 0.4 * r.next(),
                0.6 + 0.4 * r.next(),
            ];
            let img = image::RgbImage::from_fn(spec.size, spec.size, |x, y| {
                let d = ((x as f32 - x0).powi(2) + (y as f32 - y0).powi(2)).sqrt();
                let disc = (1.0 - (d - rad).max(0.0) / 2.0).clamp(0.0, 1.0);
                image::Rgb(std::array::from_fn(|k| {
                    ((0.35 * r.next() + disc * tint[k]).min(1.0) * 255.0) as u8
                }))
            });
            let path = dir.join(format!("{n:04}.png"));
            img.save(&path).map_err(|e| DataError::Encode {
                path: path.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}
