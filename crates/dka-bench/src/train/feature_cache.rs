//! Linear probing's cache: the frozen backbone's features of the whole training split,
//! computed once (no augmentation), kept in host memory in the training precision (masks as
//! u8), preallocated so there is no concatenation peak, and streamed to the device per batch.
use super::data::{loader, to_device, Normalizer};
use super::model::Model;
use crate::config::run::RunConfig;
use crate::train::precision::Amp;
use dka_data::DecodedSplit;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

pub struct FeatureCache {
    /// `[N, ...]` features on the CPU, in the autocast type (fp32 without autocast).
    embed: Tensor,
    /// `[N]` int64 classes or `[N, H, W]` u8 class maps, on the CPU.
    target: Tensor,
}

impl FeatureCache {
    /// Features of every sample of `train` (the decoded training split), in split order.
    pub fn build(
        model: &Model,
        train: &Arc<DecodedSplit>,
        pad: bool,
        cfg: &RunConfig,
        normalizer: &Normalizer,
        amp: Amp,
        device: Device,
    ) -> anyhow::Result<Self> {
        let n = train.len() as i64;
        let (mut embed, mut target): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut pos = 0i64;
        for b in loader(train, (0..train.len()).collect(), None, cfg, 0)? {
            let (x, y, valid) = to_device(&b?, train, pad, device);
            let x = normalizer.apply(&x, valid.as_ref());
            let e = tch::no_grad(|| amp.run(|| model.embed(&x, false)))
                .to_kind(amp.kind())
                .to_device(Device::Cpu);
            let y = y.to_device(Device::Cpu);
            let k = e.size()[0];
            let e_all = embed.get_or_insert_with(|| {
                let mut s = e.size();
                s[0] = n;
                Tensor::empty(s.as_slice(), (amp.kind(), Device::Cpu))
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
        Ok(Self {
            embed: embed.expect("a non-empty training split"),
            target: target.expect("a non-empty training split"),
        })
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
            self.embed.index_select(0, &idx).to_device(device),
            self.target
                .index_select(0, &idx)
                .to_device(device)
                .to_kind(Kind::Int64),
        )
    }

    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }
}
