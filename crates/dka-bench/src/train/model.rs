//! The model of a run: the backbone (with its pretrained weights), the method's modules and
//! the task head, each in its own variable store, built in one place.
use crate::config::run::DecoderKind;
use crate::config::run::RunConfig;
use crate::train::decoder::MaskTransformer;
use crate::train::optim::Groups;
use anyhow::Context;
use dka_core::{Backbone, BackboneConfig, Features};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// The task head: Linear (classification, or Segmenter's linear decoder) or a mask transformer.
pub enum Head {
    Linear(nn::Linear),
    Mask(MaskTransformer),
}

/// Backbone, the method's modules, the task head.
pub struct Model {
    pub backbone: Backbone,
    pub backbone_vs: nn::VarStore,
    pub adapter_vs: nn::VarStore,
    pub head_vs: nn::VarStore,
    pub head: Head,
    pub segmentation: bool,
    /// What loading the weights reported (or that there were none).
    pub weights_report: String,
}

/// `[B, C, h, w]` from any backbone's features (ViT patch tokens laid on their grid).
pub fn dense_map(f: &Features) -> Tensor {
    match f.layout {
        Some(l) => dka_core::vit::Vit::feature_map(&f.x, l),
        None => f.x.shallow_clone(),
    }
}

impl Model {
    /// Backbone from `cfg.backbone` (+ `cfg.weights`), the method attached, everything of the
    /// backbone frozen but what the method trains, and a fresh task head for `classes`.
    ///
    /// Everything random (a backbone without weights, the method's fresh modules, the head) is
    /// drawn on the CPU from libtorch's seeded CPU generator whatever `device` is, then moved:
    /// a run's initial tensors are the same on every device, so a `weights = none` run
    /// evaluated, ERF-mapped or resumed on another device gets the backbone it trained.
    pub fn build(
        cfg: &RunConfig,
        classes: i64,
        segmentation: bool,
        device: Device,
    ) -> anyhow::Result<Self> {
        if device == Device::Cpu {
            Self::build_on(cfg, classes, segmentation, Device::Cpu, true)
        } else {
            Self::build_via_cpu(cfg, classes, segmentation, device)
        }
    }

    /// Built on the CPU (weights loaded there), then a model of the same shape built on
    /// `device` takes every tensor of the CPU one.
    fn build_via_cpu(
        cfg: &RunConfig,
        classes: i64,
        segmentation: bool,
        device: Device,
    ) -> anyhow::Result<Self> {
        let cpu = Self::build_on(cfg, classes, segmentation, Device::Cpu, true)?;
        let mut m = Self::build_on(cfg, classes, segmentation, device, false)?;
        for (to, from, what) in [
            (&mut m.backbone_vs, &cpu.backbone_vs, "backbone"),
            (&mut m.adapter_vs, &cpu.adapter_vs, "method"),
            (&mut m.head_vs, &cpu.head_vs, "head"),
        ] {
            to.copy(from)
                .with_context(|| format!("moving the {what}'s tensors to {device:?}"))?;
        }
        m.weights_report = cpu.weights_report;
        Ok(m)
    }

    /// The model on `device`, its weights loaded when `load` (and `cfg` names a file).
    fn build_on(
        cfg: &RunConfig,
        classes: i64,
        segmentation: bool,
        device: Device,
        load: bool,
    ) -> anyhow::Result<Self> {
        let mut bcfg = BackboneConfig::from_spec(&cfg.backbone)?;
        bcfg.set_num_classes(0);
        let mut backbone_vs = nn::VarStore::new(device);
        let mut backbone = Backbone::new(&backbone_vs.root(), &bcfg)?;
        let weights_report = match cfg.weights_file().filter(|_| load) {
            Some(w) => {
                let report = dka_core::weights::load_into(&mut backbone_vs, w, bcfg.head_prefix())?;
                format!("{}: {}", w.display(), report.summary())
            }
            None => "no weights: the backbone is randomly initialised".to_string(),
        };
        let adapter_vs = nn::VarStore::new(device);
        let method = cfg.method.method();
        method.attach(&mut backbone, &adapter_vs.root())?;
        backbone_vs.freeze();
        for (name, mut t) in backbone_vs.variables() {
            if method.trains_backbone(&name) && !name.contains("running_") {
                let _ = t.requires_grad_(true);
            }
        }
        let head_vs = nn::VarStore::new(device);
        let p = head_vs.root() / "task_head";
        let head = match (segmentation, cfg.decoder) {
            (true, DecoderKind::MaskTransformer) => {
                let d = cfg.decoder_dim.unwrap_or(backbone.num_features());
                Head::Mask(MaskTransformer::new(
                    &p,
                    backbone.num_features(),
                    classes,
                    d,
                    2,
                ))
            }
            _ => Head::Linear(nn::linear(
                p,
                backbone.num_features(),
                classes,
                Default::default(),
            )),
        };
        Ok(Self {
            backbone,
            backbone_vs,
            adapter_vs,
            head_vs,
            head,
            segmentation,
            weights_report,
        })
    }

    /// What the head reads: pooled features, or the feature map for dense prediction.
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        self.embed_features(&self.backbone.forward_features(x, train))
    }

    /// [`Model::embed`] from the backbone's features.
    pub fn embed_features(&self, f: &Features) -> Tensor {
        if self.segmentation {
            dense_map(f)
        } else {
            self.backbone.pool(f)
        }
    }

    /// Logits: `[B, C]`, or `[B, C, H, W]` upsampled to `size`.
    pub fn head_logits(&self, e: &Tensor, size: (i64, i64), train: bool) -> Tensor {
        let per_patch = match &self.head {
            Head::Linear(l) if !self.segmentation => return l.forward(e),
            Head::Linear(l) => {
                let s = l.ws.size();
                e.conv2d(
                    &l.ws.view([s[0], s[1], 1, 1]),
                    l.bs.as_ref(),
                    [1, 1],
                    [0, 0],
                    [1, 1],
                    1,
                )
            }
            Head::Mask(m) => m.forward_t(e, train),
        };
        per_patch.upsample_bilinear2d([size.0, size.1], false, None, None)
    }

    /// The trainable tensors by role, named (for the optimiser's groups).
    pub fn groups(&self) -> Groups {
        let trainable = |vs: &nn::VarStore| -> Vec<(String, Tensor)> {
            let mut v: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        Groups {
            head: trainable(&self.head_vs),
            adapter: trainable(&self.adapter_vs),
            backbone: trainable(&self.backbone_vs),
        }
    }

    /// Every tensor training can change: trainable tensors of the three stores, plus the
    /// backbone's BatchNorm statistics when the method trains the backbone.
    fn mutable(&self) -> Vec<(String, Tensor)> {
        let g = self.groups();
        let trains_backbone = !g.backbone.is_empty();
        let mut all: Vec<(String, Tensor)> = Vec::new();
        for (role, v) in [
            ("head", g.head),
            ("adapter", g.adapter),
            ("backbone", g.backbone),
        ] {
            all.extend(v.into_iter().map(|(n, t)| (format!("{role}/{n}"), t)));
        }
        if trains_backbone {
            for (n, t) in self.backbone_vs.variables() {
                if n.contains("running_") {
                    all.push((format!("backbone/{n}"), t));
                }
            }
        }
        all
    }

    /// A copy (on the CPU) of every tensor training can change.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.mutable()
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).copy()))
                .collect(),
        )
    }

    /// Puts a snapshot's values back.
    pub fn restore(&self, s: &Snapshot) {
        tch::no_grad(|| {
            for (n, mut t) in self.mutable() {
                if let Some(v) = s.0.get(&n) {
                    t.copy_(v);
                }
            }
        });
    }

    /// Loads what a run saved (`<run>/adapter`: the method's tensors, trained backbone
    /// tensors, the task head), checking that every tensor has its place and shape.
    pub fn load_trained(&mut self, dir: &Path) -> anyhow::Result<()> {
        let saved = dka_baselines::io::open(dir)?;
        let head: BTreeMap<String, Tensor> = self.head_vs.variables().into_iter().collect();
        let head_names: Vec<&str> = head.keys().map(String::as_str).collect();
        dka_baselines::io::apply(
            &saved,
            dir,
            &mut self.adapter_vs,
            &mut self.backbone_vs,
            &head_names,
        )?;
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, v) in &head {
                let t = saved.tensors.get(name).with_context(|| {
                    format!("{}: the task head's {name} is missing", dir.display())
                })?;
                anyhow::ensure!(
                    t.size() == v.size(),
                    "{}: {name} has shape {:?}, the model's head {:?}",
                    dir.display(),
                    t.size(),
                    v.size()
                );
                v.shallow_clone().copy_(&t.to_device(v.device()));
            }
            Ok(())
        })
    }

    /// Number of trainable values (head + adapter + trained backbone tensors).
    pub fn trainable_params(&self) -> i64 {
        self.groups().counts().iter().sum()
    }
}

/// Values of a model's trainable tensors at one epoch (for `best-val`/`best-test` selection).
pub struct Snapshot(BTreeMap<String, Tensor>);

impl Snapshot {
    /// The tensors by name (for checkpoints).
    pub fn tensors(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.0.iter()
    }

    pub fn from_tensors(t: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self(t.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_fork::rusty_fork_test;

    fn tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    // The path a CUDA run takes (build on the CPU, copy into a model built on the device),
    // taken here with the CPU as the "device": every tensor of every store equals the
    // CPU-built model's, although the second build drew other random numbers.
    //
    // It compares builds seeded alike, and libtorch's generator is global: another test on
    // another thread drawing from it or reseeding it between a seed and a build would make
    // the draws differ. So it runs in a process of its own (rusty-fork re-runs the test
    // binary with this test alone).
    rusty_fork_test! {
    #[test]
    fn a_model_built_for_another_device_has_the_cpu_built_tensors() {
        let d = tempfile::tempdir().unwrap();
        let vit = crate::config::run::tiny_vit_for_tests(d.path(), 16);
        let cfg = RunConfig {
            backbone: vit.clone(),
            weights: None,
            img_size: 32,
            ..Default::default()
        };
        tch::manual_seed(7);
        let direct = Model::build(&cfg, 3, false, Device::Cpu).unwrap();
        tch::manual_seed(7);
        let moved = Model::build_via_cpu(&cfg, 3, false, Device::Cpu).unwrap();
        for (a, b) in [
            (&direct.backbone_vs, &moved.backbone_vs),
            (&direct.adapter_vs, &moved.adapter_vs),
            (&direct.head_vs, &moved.head_vs),
        ] {
            let (a, b) = (tensors(a), tensors(b));
            assert!(!a.is_empty());
            assert_eq!(a.len(), b.len());
            for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                assert_eq!(na, nb);
                assert!(ta.equal(tb), "{na} differs");
                assert_eq!(ta.requires_grad(), tb.requires_grad(), "{na}'s grad flag");
            }
        }
        // Seeded alike, a build straight on the "device" without the CPU copy is a different
        // draw only in what comes after the first build: the copy is what makes them equal.
        tch::manual_seed(7);
        let _first = Model::build_on(&cfg, 3, false, Device::Cpu, true).unwrap();
        let second = Model::build_on(&cfg, 3, false, Device::Cpu, false).unwrap();
        let differs = tensors(&direct.adapter_vs)
            .iter()
            .zip(tensors(&second.adapter_vs))
            .any(|((_, a), (_, b))| !a.equal(&b));
        assert!(
            differs,
            "the skeleton's own draw differs, so the test can fail"
        );
    }
    }
}
