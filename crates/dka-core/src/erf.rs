//! Effective receptive field (ERF), RepLKNet's procedure (Ding et al., CVPR 2022; their
//! `erf/visualize_erf.py` and `erf/analyze_erf.py`), for the paper's Figures 2 and 6.
//!
//! For each image: take the last feature map `[batch, C, h, w]` (ViT: the patch tokens after
//! the final norm, prefix tokens left out, laid on their `h x w` grid; ResNet, SAM and
//! TinyViT encoders: their map), sum `relu(out[:, :, h/2, w/2])` over batch and channels, back-propagate to the
//! input image, take `relu(grad)` and sum it over the colour channels: an `[H, W]` map of
//! contribution scores. [`ErfAccumulator`] adds these up over images; RepLKNet averages them
//! (`AverageMeter`), skipping an image whose scores contain NaN, and so does
//! [`ErfAccumulator::mean`].
//!
//! Analysis, as `analyze_erf.py` does it: the **mean** scores are mapped to
//! `log10(x + 1) / max` ([`normalised_log_map`]; `log10(x + 1)` is not scale-invariant, so
//! mean and sum give different maps), and the high-contribution area ratio is read from that
//! normalised map ([`area_ratio`], [`high_contribution_area_ratios`]).
//!
//! Batches: the scores of a batch are the per-image gradients (the summed output of image `b`
//! depends on image `b` only when the model runs in eval mode, so one backward pass gives
//! every image's gradient); RepLKNet feeds one image at a time, which is the same thing.
use crate::backbone::Backbone;
use crate::error::{CoreError, Result};
use crate::vit::Vit;
use tch::{Device, Kind, Tensor};

/// The thresholds RepLKNet reports (and the paper's Figure 6).
pub const THRESHOLDS: [f64; 4] = [0.2, 0.3, 0.5, 0.99];

/// Contribution scores summed over images.
#[derive(Debug)]
pub struct ErfAccumulator {
    /// `[H, W]`, f64 on the CPU.
    sum: Tensor,
    images: usize,
    skipped: usize,
}

impl ErfAccumulator {
    /// An empty accumulator for `h x w` input images.
    pub fn new(h: i64, w: i64) -> Self {
        Self {
            sum: Tensor::zeros([h, w], (Kind::Double, Device::Cpu)),
            images: 0,
            skipped: 0,
        }
    }

    /// Adds the scores of `images` (`[batch, channels, H, W]`, on the model's device) through
    /// `feature_map` (input batch to `[batch, C, h, w]`, in eval mode). Images whose scores
    /// are not finite are skipped, as RepLKNet does. Returns how many images were added.
    pub fn add(
        &mut self,
        feature_map: &dyn Fn(&Tensor) -> Tensor,
        images: &Tensor,
    ) -> Result<usize> {
        let scores = contribution_scores(feature_map, images)?;
        let s = self.sum.size();
        let (b, h, w) = scores.size3()?;
        if [h, w] != s[..] {
            return Err(CoreError::InputShape {
                name: "erf images".into(),
                shape: images.size(),
                expected: format!("[batch, channels, {}, {}]", s[0], s[1]),
            });
        }
        let finite = scores.isfinite().all_dims(&[1i64, 2][..], false);
        let keep: Vec<bool> = Vec::<bool>::try_from(&finite)?;
        let mut added = 0;
        for (i, ok) in keep.into_iter().enumerate() {
            if ok {
                self.sum += scores.get(i as i64);
                added += 1;
            }
        }
        self.images += added;
        self.skipped += b as usize - added;
        Ok(added)
    }

    /// Summed scores `[H, W]` (f64, CPU).
    pub fn sum(&self) -> &Tensor {
        &self.sum
    }

    /// Mean scores per image `[H, W]` (RepLKNet's saved matrix); zeros before any image.
    pub fn mean(&self) -> Tensor {
        &self.sum / self.images.max(1) as f64
    }

    /// Images added.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Images skipped because their scores were not finite.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// Contribution scores of each image: `[batch, H, W]`, f64 on the CPU. Only the input gets a
/// gradient (the model's own tensors are left alone, whatever their `requires_grad`).
pub fn contribution_scores(
    feature_map: &dyn Fn(&Tensor) -> Tensor,
    images: &Tensor,
) -> Result<Tensor> {
    let x = images.detach().set_requires_grad(true);
    let out = feature_map(&x);
    let (_, _, h, w) = out.size4().map_err(|_| CoreError::InputShape {
        name: "erf feature map".into(),
        shape: out.size(),
        expected: "[batch, channels, h, w]".into(),
    })?;
    let centre = out
        .select(2, h / 2)
        .select(2, w / 2)
        .relu()
        .sum(Kind::Float);
    let grad = Tensor::f_run_backward(&[&centre], &[&x], false, false)?
        .pop()
        .expect("one input, one gradient");
    Ok(grad
        .relu()
        .sum_dim_intlist(1, false, Kind::Double)
        .to_device(Device::Cpu))
}

/// The last feature map `[batch, C, h, w]` of any backbone, in eval mode: a ViT's patch tokens
/// after the final norm (prefix tokens left out) on their grid; otherwise the backbone's own
/// map (ResNet's last stage, SAM's and TinyViT's neck).
pub fn backbone_feature_map(b: &Backbone, x: &Tensor) -> Tensor {
    let f = b.forward_features(x, false);
    match f.layout {
        Some(layout) => Vit::feature_map(&f.x, layout),
        None => f.x,
    }
}

/// `log10(x + 1)` scaled to `[0, 1]` by its maximum (all zeros stay zeros).
pub fn normalised_log_map(scores: &Tensor) -> Tensor {
    let l = (scores.to_kind(Kind::Double) + 1.0).log10();
    let max = l.max().double_value(&[]);
    if max > 0.0 {
        l / max
    } else {
        l
    }
}

/// The smallest centred square holding more than a fraction `t` of a map's total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AreaRatio {
    /// Side of the square in pixels (odd).
    pub side: i64,
    /// `(side / H) * (side / W)`.
    pub ratio: f64,
}

/// High-contribution area ratio of an `[H, W]` map, exactly RepLKNet's `get_rectangle`:
/// squares of odd side `2i + 1` centred on pixel `(H/2, W/2)` (integer division, the pixel
/// the feature-map centre is taken at), for `i = 1, 2, …` up to `min(H, W)/2 − 1`; the first
/// whose sum exceeds **strictly** `t · total` gives `(side, (side/H)·(side/W))`. So the
/// single centre pixel (side 1) is never a candidate, the square always fits inside the map,
/// and no square is found (`None`) when even the largest does not exceed `t` (or the map sums
/// to zero). For square maps this is `get_rectangle` line for line; RepLKNet only handles
/// square maps, and on a non-square one the squares stop at the shorter side here.
pub fn area_ratio(map: &Tensor, t: f64) -> Option<AreaRatio> {
    let m = map.to_kind(Kind::Double).to_device(Device::Cpu);
    let (h, w) = m.size2().expect("an [H, W] map");
    let total = m.sum(Kind::Double).double_value(&[]);
    if total <= 0.0 {
        return None;
    }
    let (ch, cw) = (h / 2, w / 2);
    (1..h.min(w) / 2).find_map(|i| {
        let side = 2 * i + 1;
        let s = m
            .narrow(0, ch - i, side)
            .narrow(1, cw - i, side)
            .sum(Kind::Double)
            .double_value(&[]);
        (s / total > t).then(|| AreaRatio {
            side,
            ratio: side as f64 / h as f64 * (side as f64 / w as f64),
        })
    })
}

/// RepLKNet's report: the area ratio at each of [`THRESHOLDS`], read from the normalised log
/// map of the mean scores (pass [`ErfAccumulator::mean`]).
pub fn high_contribution_area_ratios(mean_scores: &Tensor) -> Vec<(f64, Option<AreaRatio>)> {
    let map = normalised_log_map(mean_scores);
    THRESHOLDS
        .iter()
        .map(|&t| (t, area_ratio(&map, t)))
        .collect()
}
