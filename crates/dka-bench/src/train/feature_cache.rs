//! What a run computes once for its whole training split instead of at every step: linear
//! probing's frozen backbone features (no augmentation), or, for the other methods without
//! augmentation, the output of the backbone's frozen stem (TinyViT's patch embedding and
//! MbConv stage, which no method changes: [`dka_core::Backbone::has_frozen_stem`]). Kept in
//! host memory in the training precision (masks as u8), preallocated so there is no
//! concatenation peak, and streamed to the device per batch.
use super::data::{eval_loader, to_device, Normalizer};
use super::model::Model;
use super::step::StepInput;
use crate::config::run::RunConfig;
use crate::train::precision::Amp;
use dka_data::DecodedSplit;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The largest stem cache a run keeps in host memory; a larger training split (ResNet-sized
/// maps of a whole dataset) runs its stem at every step as before.
pub const STEM_CACHE_BYTES: i64 = 4 << 30;

/// What the steps of a run with `cfg` and `model` take as input: linear probing's cached
/// features, a frozen stem's cached output (no augmentation, no activation checkpointing),
/// or images. `DKA_STEM_CACHE=0` turns the stem cache off (to compare).
pub fn step_input(cfg: &RunConfig, model: &Model) -> StepInput {
    let stem_cache = std::env::var("DKA_STEM_CACHE").map_or(true, |v| v != "0");
    if cfg.method.method().frozen_features() {
        StepInput::Features
    } else if stem_cache
        && !cfg.augment
        && !cfg.checkpoint_blocks
        && model.backbone.has_frozen_stem()
    {
        StepInput::Stem
    } else {
        StepInput::Images
    }
}

pub struct FeatureCache {
    /// `[N, ...]` features on the CPU, in the autocast type (fp32 without autocast), or stem
    /// outputs in the type the stem gives them.
    embed: Tensor,
    /// `[N]` int64 classes or `[N, H, W]` u8 class maps, on the CPU.
    target: Tensor,
    what: StepInput,
    /// The permutation that puts `embed`'s dimensions back in their logical order.
    back: Vec<i64>,
}

/// The dimensions of `t` from the largest stride to the smallest, the batch (dimension 0)
/// first whatever its stride: `[0, 2, 3, 1]` for a channels-last map, the identity for a
/// contiguous tensor.
fn stride_order(t: &Tensor) -> Vec<i64> {
    let stride = t.stride();
    let mut rest: Vec<i64> = (1..stride.len() as i64).collect();
    rest.sort_by_key(|&d| std::cmp::Reverse(stride[d as usize]));
    std::iter::once(0).chain(rest).collect()
}

impl FeatureCache {
    /// Features (`what` = [`StepInput::Features`]) or stem outputs ([`StepInput::Stem`]) of
    /// every sample of `train` (the decoded training split), in split order; `None` when they
    /// would take more than `max_bytes` of host memory.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        model: &Model,
        what: StepInput,
        train: &Arc<DecodedSplit>,
        pad: bool,
        cfg: &RunConfig,
        normalizer: &Normalizer,
        amp: Amp,
        device: Device,
        max_bytes: Option<i64>,
    ) -> anyhow::Result<Option<Self>> {
        anyhow::ensure!(what != StepInput::Images, "images are not cached");
        let n = train.len() as i64;
        let (mut embed, mut target): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut layout: Option<Vec<i64>> = None;
        let mut pos = 0i64;
        for b in eval_loader(train, (0..train.len()).collect(), cfg)? {
            let (x, y, valid) = to_device(&b?, train, pad, device);
            let x = normalizer.apply(&x, valid.as_ref());
            let e = tch::no_grad(|| {
                amp.run(|| match what {
                    StepInput::Stem => model.backbone.stem(&x).expect("a frozen stem"),
                    _ => model.embed(&x, false),
                })
            });
            // Features in the training precision (as linear probing always kept them); the
            // stem's output exactly as the uncached forward hands it on.
            let e = match what {
                StepInput::Features => e.to_kind(amp.kind()),
                _ => e,
            }
            .to_device(Device::Cpu);
            // Kept in the memory layout it came in (a convolution's output may be channels-last,
            // and the next layers then read it without a copy): dimensions ordered by stride,
            // the batch first, and put back in `batch`.
            let order = layout.get_or_insert_with(|| stride_order(&e)).clone();
            let e = e.permute(order.as_slice());
            if let Some(max) = max_bytes {
                let per_sample =
                    e.numel() as i64 / e.size()[0].max(1) * e.kind().elt_size_in_bytes() as i64;
                if per_sample * n > max {
                    return Ok(None);
                }
            }
            let y = y.to_device(Device::Cpu);
            let k = e.size()[0];
            let e_all = embed.get_or_insert_with(|| {
                let mut s = e.size();
                s[0] = n;
                Tensor::empty(s.as_slice(), (e.kind(), Device::Cpu))
            });
            let y_all = target.get_or_insert_with(|| {
                let mut s = y.size();
                s[0] = n;
                let kind = if s.len() > 1 {
                    Kind::Uint8
                } else {
                    Kind::Int64
                };
                Tensor::empty(s.as_slice(), (kind, Device::Cpu))
            });
            e_all.narrow(0, pos, k).copy_(&e);
            let mut dst = y_all.narrow(0, pos, k);
            dst.copy_(&y.to_kind(dst.kind()));
            pos += k;
        }
        anyhow::ensure!(
            pos == n,
            "the feature cache saw {pos} of {n} training samples"
        );
        let layout = layout.expect("a non-empty training split");
        let mut back = vec![0i64; layout.len()];
        for (i, &d) in layout.iter().enumerate() {
            back[d as usize] = i as i64;
        }
        Ok(Some(Self {
            back,
            embed: embed.expect("a non-empty training split"),
            target: target.expect("a non-empty training split"),
            what,
        }))
    }

    pub fn len(&self) -> usize {
        self.embed.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Features and int64 targets of the samples at `positions`, on `device`.
    pub fn batch(&self, positions: &[usize], device: Device) -> (Tensor, Tensor) {
        let idx = Tensor::from_slice(&positions.iter().map(|&i| i as i64).collect::<Vec<_>>());
        (
            self.embed
                .index_select(0, &idx)
                .to_device(device)
                .permute(self.back.as_slice()),
            self.target
                .index_select(0, &idx)
                .to_device(device)
                .to_kind(Kind::Int64),
        )
    }

    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// What the cache holds.
    pub fn what(&self) -> StepInput {
        self.what
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stride_order_puts_the_batch_first_and_undoes_a_channels_last_layout() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        assert_eq!(stride_order(&x), vec![0, 1, 2, 3]);
        // [B, C, H, W] in channels-last memory: a contiguous [B, H, W, C] permuted.
        let cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let order = stride_order(&cl);
        assert_eq!(order, vec![0, 2, 3, 1]);
        let stored = cl.permute(order.as_slice());
        assert!(stored.is_contiguous(), "stored in its memory order");
        assert!(stored.permute([0, 3, 1, 2]).equal(&x));
    }
}
