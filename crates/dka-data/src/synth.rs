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

/// The long-range task (`dka data synth --task long-range`): the class of an image is the
/// colour of the patch exactly `distance` patches right of a white marker, while every colour
/// appears equally often in every image (`per_colour` patches of each, the target included),
/// so no statistic of the image without the marker–target offset tells the class. On the
/// token grid of a ViT with `patch` pixels, a depthwise kernel reaches the target from the
/// marker only if its radius is at least `distance`: the 51×51 branch of DKA does, a stack of
/// 5×5 ones in a shallow backbone does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongRangeSpec {
    /// Patches per image side (the token grid), at least `distance + 1`.
    pub grid: u32,
    /// Pixels per patch (the ViT's patch size), at least 4.
    pub patch: u32,
    /// Marker-to-target offset, in patches.
    pub distance: u32,
    /// Images per class (3 classes: red, green, blue).
    pub per_class: u32,
    /// Patches of each colour per image.
    pub per_colour: u32,
    pub seed: u64,
}

impl Default for LongRangeSpec {
    fn default() -> Self {
        Self {
            grid: 16,
            patch: 8,
            distance: 10,
            per_class: 100,
            per_colour: 2,
            seed: 0,
        }
    }
}

/// Writes `3 x per_class` long-range images under `out/{red,green,blue}/`.
pub fn write_long_range(out: &Path, spec: &LongRangeSpec) -> Result<()> {
    let (g, p, d) = (spec.grid, spec.patch, spec.distance);
    let free = g * g - 2;
    if d == 0
        || g <= d
        || p < 4
        || spec.per_class < 1
        || spec.per_colour < 1
        || 3 * spec.per_colour > free
    {
        return Err(DataError::config(
            "long-range data needs 0 < distance < grid, patch >= 4, >= 1 image per class and \
             room on the grid for every colour's patches",
        ));
    }
    const COLOURS: [(&str, [u8; 3]); 3] = [
        ("red", [220, 40, 40]),
        ("green", [40, 200, 40]),
        ("blue", [40, 60, 220]),
    ];
    let side = g * p;
    for (c, (name, _)) in COLOURS.iter().enumerate() {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        for n in 0..spec.per_class {
            let mut r =
                Mix(spec.seed ^ ((c as u64) << 32 | n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut pick = |k: u32| ((r.next() * k as f32) as u32).min(k - 1);
            let mut img = image::RgbImage::new(side, side);
            let mut noise =
                Mix(spec.seed.wrapping_add(0x5851_F42D) ^ (c as u64 * 1_000_003 + n as u64));
            for px in img.pixels_mut() {
                let v = 90 + (noise.next() * 20.0) as u8;
                *px = image::Rgb([v, v, v]);
            }
            let put = |img: &mut image::RgbImage, (y, x): (u32, u32), rgb: [u8; 3]| {
                for yy in y * p + 1..(y + 1) * p - 1 {
                    for xx in x * p + 1..(x + 1) * p - 1 {
                        img.put_pixel(xx, yy, image::Rgb(rgb));
                    }
                }
            };
            let marker = (pick(g), pick(g - d));
            let target = (marker.0, marker.1 + d);
            let mut taken = vec![marker, target];
            put(&mut img, marker, [255, 255, 255]);
            put(&mut img, target, COLOURS[c].1);
            for (k, (_, rgb)) in COLOURS.iter().enumerate() {
                let count = spec.per_colour - u32::from(k == c);
                for _ in 0..count {
                    let at = loop {
                        let at = (pick(g), pick(g));
                        if !taken.contains(&at) {
                            break at;
                        }
                    };
                    taken.push(at);
                    put(&mut img, at, *rgb);
                }
            }
            let path = dir.join(format!("{n:04}.png"));
            img.save(&path).map_err(|e| DataError::Encode {
                path: path.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every image has one white marker, the class colour `distance` patches right of it, and
    /// each colour the same number of times.
    #[test]
    fn long_range_images_hide_the_class_in_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LongRangeSpec {
            grid: 8,
            patch: 4,
            distance: 5,
            per_class: 4,
            per_colour: 2,
            seed: 1,
        };
        write_long_range(dir.path(), &spec).unwrap();
        for (class, rgb) in [
            ("red", [220, 40, 40]),
            ("green", [40, 200, 40]),
            ("blue", [40, 60, 220]),
        ] {
            for n in 0..4 {
                let img = image::open(dir.path().join(class).join(format!("{n:04}.png")))
                    .unwrap()
                    .to_rgb8();
                assert_eq!(img.dimensions(), (32, 32));
                let centre = |y: u32, x: u32| img.get_pixel(x * 4 + 2, y * 4 + 2).0;
                let mut marker = None;
                let mut counts = std::collections::BTreeMap::new();
                for y in 0..8 {
                    for x in 0..8 {
                        let c = centre(y, x);
                        if c == [255, 255, 255] {
                            assert!(marker.is_none(), "one marker");
                            marker = Some((y, x));
                        } else if c[0] != c[1] || c[1] != c[2] {
                            *counts.entry(c).or_insert(0) += 1;
                        }
                    }
                }
                let (y, x) = marker.expect("a marker");
                assert_eq!(centre(y, x + 5), rgb, "{class} {n}");
                assert_eq!(counts.len(), 3);
                assert!(counts.values().all(|&k| k == 2), "{counts:?}");
            }
        }
    }
}
