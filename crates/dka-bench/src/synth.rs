//! `dka data synth`: a small, learnable image-folder dataset (`root/<class>/<n>.png`) for the
//! `quick` profiles and tests: each class puts a bright disc in its own region of a noisy
//! image (position, size and colour jittered), so a trained model beats chance and an
//! untrained one does not.
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    classes: u32,
    #[arg(long, default_value_t = 40)]
    per_class: u32,
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    write(&a.out, a.classes, a.per_class, a.size, a.seed)
}

/// Writes `classes` x `per_class` images of `size` pixels under `out/class<c>/`.
pub fn write(
    out: &std::path::Path,
    classes: u32,
    per_class: u32,
    size: u32,
    seed: u64,
) -> anyhow::Result<()> {
    let a = Args {
        out: out.to_path_buf(),
        classes,
        per_class,
        size,
        seed,
    };
    anyhow::ensure!(
        a.classes >= 2 && a.per_class >= 1 && a.size >= 16,
        "need >= 2 classes, >= 1 image per class, size >= 16"
    );
    let s = a.size as f32;
    for c in 0..a.classes {
        let dir = a.out.join(format!("class{c}"));
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        // Class centres on a circle around the image centre.
        let angle = std::f32::consts::TAU * c as f32 / a.classes as f32;
        let (cx, cy) = (0.5 + 0.25 * angle.cos(), 0.5 + 0.25 * angle.sin());
        for n in 0..a.per_class {
            let mut r =
                Mix(a.seed ^ ((c as u64) << 32 | n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
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
            let img = image::RgbImage::from_fn(a.size, a.size, |x, y| {
                let d = ((x as f32 - x0).powi(2) + (y as f32 - y0).powi(2)).sqrt();
                let disc = (1.0 - (d - rad).max(0.0) / 2.0).clamp(0.0, 1.0);
                image::Rgb(std::array::from_fn(|k| {
                    ((0.35 * r.next() + disc * tint[k]).min(1.0) * 255.0) as u8
                }))
            });
            let path = dir.join(format!("{n:04}.png"));
            img.save(&path)
                .with_context(|| path.display().to_string())?;
        }
    }
    tracing::info!(
        "wrote {} images in {} classes to {}",
        a.classes * a.per_class,
        a.classes,
        a.out.display()
    );
    Ok(())
}
