//! One training step's forward and backward, shared by the trainer and the time estimate
//! (`dka plan`): the loss of a batch back-propagated, with activation checkpointing when the
//! run asks for it. The loss stays on the device: reading it back would make the host wait for
//! the device at every step.
use super::evaluate::EvalSetup;
use super::loss::loss;
use super::model::Model;
use super::optim::Optimizer;
use super::precision::LossScaler;
use crate::config::run::RunConfig;
use tch::{Kind, Tensor};

/// What a step's `input` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepInput {
    /// Normalised images.
    Images,
    /// Linear probing's cached backbone features.
    Features,
    /// The cached output of the backbone's frozen stem ([`dka_core::Backbone::stem`]).
    Stem,
}

/// The model, config and evaluation setup a step runs with.
#[derive(Clone, Copy)]
pub struct Stepper<'a> {
    pub model: &'a Model,
    pub cfg: &'a RunConfig,
    pub setup: &'a EvalSetup,
}

impl Stepper<'_> {
    /// The loss of one batch (detached, on the device), back-propagated after the gradients
    /// are cleared; fp16 (`scaler`) back-propagates the scaled loss. `what`: images, linear
    /// probing's cached features or the frozen stem's cached output. With `checkpoint_blocks`
    /// the backbone runs its own backward on images (activation checkpointing).
    pub fn forward_backward(
        &self,
        opt: &Optimizer,
        scaler: Option<&LossScaler>,
        input: &Tensor,
        y: &Tensor,
        what: StepInput,
    ) -> anyhow::Result<Tensor> {
        let (model, setup) = (self.model, self.setup);
        let seg_loss = self.cfg.seg_loss;
        opt.zero_grad()?;
        if self.cfg.checkpoint_blocks && what == StepInput::Images {
            let mut value = None;
            let _detached_loss = setup.amp.run(|| {
                model.backbone.forward_backward(input, true, true, |f| {
                    let logits = model
                        .head_logits(&model.embed_features(f), setup.size, true)
                        .to_kind(Kind::Float);
                    let l = loss(&logits, y, seg_loss);
                    value = Some(l.detach());
                    match scaler {
                        Some(s) => s.scaled(&l),
                        None => l,
                    }
                })
            });
            return value.ok_or_else(|| anyhow::anyhow!("the checkpointed step computed no loss"));
        }
        let logits = setup
            .amp
            .run(|| {
                let e = match what {
                    StepInput::Features => input.shallow_clone(),
                    StepInput::Images => model.embed(input, true),
                    StepInput::Stem => {
                        model.embed_features(&model.backbone.forward_from_stem(input, true))
                    }
                };
                model.head_logits(&e, setup.size, true)
            })
            .to_kind(Kind::Float);
        let l = loss(&logits, y, seg_loss);
        match scaler {
            Some(s) => s.scaled(&l).backward(),
            None => l.backward(),
        }
        Ok(l.detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::precision::Amp;
    use tch::{Device, Kind};

    /// The method's defaults with dropout 0: the tests here compare two steps of one model,
    /// and dropout would draw other masks in each.
    fn without_dropout(name: &str) -> dka_baselines::MethodConfig {
        let mut json =
            serde_json::to_value(dka_baselines::MethodConfig::by_name(name).unwrap()).unwrap();
        if let Some(d) = json.get_mut("dropout") {
            *d = serde_json::json!(0.0);
        }
        serde_json::from_value(json).unwrap()
    }

    /// The gradients of every trainable tensor after one step, by name.
    fn grads(model: &Model) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for vs in [&model.backbone_vs, &model.adapter_vs, &model.head_vs] {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in v {
                if t.requires_grad() {
                    out.push((name, t.grad().copy()));
                }
            }
        }
        out
    }

    /// Under bf16 autocast the checkpointed step (a no-grad pass, then each block again with
    /// autograd) gives every method the plain step's gradients. Autocast caches its bf16
    /// casts of trained weights without looking at grad mode: a cast made in the no-grad pass
    /// and reused in the recompute would carry no gradient back to the weight.
    #[test]
    fn checkpointed_and_plain_bf16_steps_give_equal_gradients_for_every_method() {
        let d = tempfile::tempdir().unwrap();
        let vit = crate::config::run::tiny_vit_for_tests(d.path(), 32);
        for name in dka_baselines::NAMES {
            let method = without_dropout(name);
            let plain = RunConfig {
                backbone: vit.clone(),
                method: method.clone(),
                img_size: 32,
                precision: crate::config::run::Precision::Bf16,
                ..Default::default()
            }
            .resolve(Device::Cpu)
            .unwrap();
            // One model and one batch for both steps (a step only fills the gradients): no
            // second draw from libtorch's global generator, which the crate's other tests,
            // on other threads, draw from too.
            let model = Model::build(&plain, 3, false, Device::Cpu).unwrap();
            let opt = Optimizer::new(&plain.optimizer, model.groups()).unwrap();
            let mut setup = EvalSetup::new(&plain, 3, Device::Cpu).unwrap();
            setup.amp = Amp::cpu_bf16();
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 2]);
            let run = |checkpoint_blocks: bool| {
                let cfg = RunConfig {
                    checkpoint_blocks,
                    ..plain.clone()
                };
                let stepper = Stepper {
                    model: &model,
                    cfg: &cfg,
                    setup: &setup,
                };
                let loss = stepper
                    .forward_backward(&opt, None, &x, &y, StepInput::Images)
                    .unwrap()
                    .double_value(&[]);
                (loss, grads(&model))
            };
            let (l0, g0) = run(false);
            let (l1, g1) = run(true);
            assert!(
                (l0 - l1).abs() <= 1e-3 * l0.abs().max(1.0),
                "{name}: loss {l0} vs {l1}"
            );
            assert_eq!(g0.len(), g1.len(), "{name}");
            for ((n, a), (_, b)) in g0.iter().zip(&g1) {
                assert!(a.defined(), "{name}: {n}: no gradient in the plain step");
                assert!(
                    b.defined(),
                    "{name}: {n}: no gradient in the checkpointed step"
                );
                let scale = a.abs().max().double_value(&[]).max(1e-6);
                let err = (a - b).abs().max().double_value(&[]) / scale;
                // bf16 round-off: the two passes sum in other orders.
                assert!(err <= 2e-2, "{name}: {n}: relative difference {err:e}");
            }
        }
    }

    /// With the frozen stem cached (TinyViT: LiteMedSAM's encoder, random weights, no
    /// augmentation) a step from the stem's output gives the loss and every gradient of the
    /// step from the images, exactly; methods that train the stem (full fine-tuning, BitFit)
    /// or sit before it (VPT's input prompt) step from images.
    #[test]
    fn a_step_from_the_cached_stem_equals_the_step_from_images() {
        use crate::train::feature_cache::step_input;
        for name in ["lora", "adapter", "dka", "full", "bitfit", "vpt"] {
            let cfg = RunConfig {
                backbone: "litemedsam_tinyvit".into(),
                weights: None,
                method: without_dropout(name),
                img_size: 32,
                augment: false,
                ..Default::default()
            }
            .resolve(Device::Cpu)
            .unwrap();
            // One model and one batch for both steps, as above.
            let model = Model::build(&cfg, 3, false, Device::Cpu).unwrap();
            let opt = Optimizer::new(&cfg.optimizer, model.groups()).unwrap();
            let setup = EvalSetup::new(&cfg, 3, Device::Cpu).unwrap();
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 2]);
            let run = |from_stem: bool| {
                let what = step_input(&cfg, &model);
                let (input, what) = if from_stem {
                    let stem = tch::no_grad(|| setup.amp.run(|| model.backbone.stem(&x)));
                    (stem.unwrap_or_else(|| x.shallow_clone()), what)
                } else {
                    (x.shallow_clone(), StepInput::Images)
                };
                let stepper = Stepper {
                    model: &model,
                    cfg: &cfg,
                    setup: &setup,
                };
                let loss = stepper
                    .forward_backward(&opt, None, &input, &y, what)
                    .unwrap()
                    .double_value(&[]);
                (what, loss, grads(&model))
            };
            let (_, l0, g0) = run(false);
            let (what, l1, g1) = run(true);
            let expected = match name {
                "full" | "bitfit" | "vpt" => StepInput::Images,
                _ => StepInput::Stem,
            };
            assert_eq!(what, expected, "{name}");
            assert_eq!(l0, l1, "{name}: loss");
            assert_eq!(g0.len(), g1.len(), "{name}");
            for ((n, a), (_, b)) in g0.iter().zip(&g1) {
                let err = (a - b).abs().max().double_value(&[]);
                assert_eq!(err, 0.0, "{name}: {n}: gradients differ");
            }
        }
    }
}
