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

/// The model, config and evaluation setup a step runs with.
#[derive(Clone, Copy)]
pub struct Stepper<'a> {
    pub model: &'a Model,
    pub cfg: &'a RunConfig,
    pub setup: &'a EvalSetup,
}

impl Stepper<'_> {
    /// The loss of one batch (detached, on the device), back-propagated after the gradients
    /// are cleared; fp16 (`scaler`) back-propagates the scaled loss. `cached`: `input` is
    /// linear probing's cached features. With `checkpoint_blocks` the backbone runs its own
    /// backward (activation checkpointing).
    pub fn forward_backward(
        &self,
        opt: &Optimizer,
        scaler: Option<&LossScaler>,
        input: &Tensor,
        y: &Tensor,
        cached: bool,
    ) -> anyhow::Result<Tensor> {
        let (model, setup) = (self.model, self.setup);
        let seg_loss = self.cfg.seg_loss;
        opt.zero_grad()?;
        if self.cfg.checkpoint_blocks && !cached {
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
                if cached {
                    model.head_logits(input, setup.size, true)
                } else {
                    model.head_logits(&model.embed(input, true), setup.size, true)
                }
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
