//! Train-time augmentation: random resized crop and horizontal flip, drawn from a seeded
//! [`Rng`] and applied identically to an image and its mask.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// torchvision's `RandomResizedCrop` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// What training applies on top of the preprocessing; evaluation never sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// `None` resizes the whole image (as evaluation does) before flipping.
    pub random_resized_crop: Option<RandomResizedCrop>,
    /// Probability of a horizontal flip.
    pub hflip: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            random_resized_crop: Some(RandomResizedCrop::default()),
            hflip: 0.5,
        }
    }
}

/// A crop box in pixels: x, y, width, height.
pub type CropBox = (u32, u32, u32, u32);

impl RandomResizedCrop {
    /// Draws a crop box as torchvision does: ten tries at a random area and log-uniform aspect
    /// ratio, then a centre crop clamped to the ratio range.
    pub fn sample(&self, width: u32, height: u32, rng: &mut Rng) -> CropBox {
        let (w, h) = (width as f64, height as f64);
        let area = w * h;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.scale.0, self.scale.1);
            let ratio = rng.range(lr0, lr1).exp();
            let cw = (target * ratio).sqrt().round();
            let ch = (target / ratio).sqrt().round();
            if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
                let (cw, ch) = (cw as u32, ch as u32);
                let x = rng.below((width - cw + 1) as usize) as u32;
                let y = rng.below((height - ch + 1) as usize) as u32;
                return (x, y, cw, ch);
            }
        }
        // Fallback: the largest centre crop within the ratio range.
        let in_ratio = w / h;
        let (cw, ch) = if in_ratio < self.ratio.0 {
            (w, (w / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((h * self.ratio.1).round(), h)
        } else {
            (w, h)
        };
        let (cw, ch) = ((cw as u32).clamp(1, width), (ch as u32).clamp(1, height));
        ((width - cw) / 2, (height - ch) / 2, cw, ch)
    }
}

/// The augmentation drawn for one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    pub crop: Option<CropBox>,
    pub flip: bool,
}

impl Augment {
    /// Draws crop and flip for an image of the given size.
    pub fn draw(&self, width: u32, height: u32, rng: &mut Rng) -> Drawn {
        let crop = self
            .random_resized_crop
            .map(|c| c.sample(width, height, rng));
        let flip = rng.uniform() < self.hflip;
        Drawn { crop, flip }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::{any, prop_assert, proptest};

    proptest! {
        #[test]
        fn crop_boxes_stay_inside_the_image(w in 1u32..600, h in 1u32..600, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, y, cw, ch) = RandomResizedCrop::default().sample(w, h, &mut rng);
            prop_assert!(cw >= 1 && ch >= 1);
            prop_assert!(x + cw <= w && y + ch <= h);
        }
    }

    #[test]
    fn same_seed_same_augmentation() {
        let a = Augment::default();
        let d1 = a.draw(300, 200, &mut Rng::new(5));
        let d2 = a.draw(300, 200, &mut Rng::new(5));
        assert_eq!(d1, d2);
    }
}
