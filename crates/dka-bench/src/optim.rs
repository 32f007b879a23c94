//! Parameter groups over libtorch's optimisers, clipping, dynamic loss scaling (fp16) and the
//! learning-rate schedule.
//!
//! Six libtorch groups: (head, adapter, backbone) × (decayed, not decayed). Each role has its
//! own learning rate; weight decay applies only to the decayed half, which holds neither
//! biases, norms, prompts, position/class embeddings, learnable radii nor any 1-D tensor
//! (unless `decay_all`), nor the head (unless `decay_head`).
use crate::precision::LossScaler;
use crate::run_config::{OptimConfig, OptimKind, Schedule};
use tch::{COptimizer, Tensor};

/// Named trainable tensors by role: the task head, the method's modules, trained backbone
/// tensors.
#[derive(Default)]
pub struct Groups {
    pub head: Vec<(String, Tensor)>,
    pub adapter: Vec<(String, Tensor)>,
    pub backbone: Vec<(String, Tensor)>,
}

impl Groups {
    /// Number of trainable values in each role (head, adapter, backbone).
    pub fn counts(&self) -> [i64; 3] {
        let n = |g: &[(String, Tensor)]| g.iter().map(|(_, t)| t.numel() as i64).sum();
        [n(&self.head), n(&self.adapter), n(&self.backbone)]
    }
}

/// Whether weight decay may touch the tensor `name` (timm's rule, plus prompts and radii).
pub fn decays(name: &str, t: &Tensor, cfg: &OptimConfig, head: bool) -> bool {
    if head && !cfg.decay_head {
        return false;
    }
    if cfg.decay_all {
        return true;
    }
    let exempt = t.dim() <= 1
        || name.ends_with("bias")
        || name.contains("norm")
        || name.contains("pos_embed")
        || name.contains("cls_token")
        || name.contains("prompt")
        || name.contains("radius");
    !exempt
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Global gradient norm before clipping (NaN when the step was skipped).
    pub grad_norm: f64,
    /// fp16 only: the gradients were not finite, the step was skipped and the scale halved.
    pub skipped: bool,
}

pub struct Optimizer {
    opt: COptimizer,
    /// Learning rate of each of the six groups.
    base_lrs: [f64; 6],
    params: Vec<Tensor>,
    cfg: OptimConfig,
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, groups: Groups) -> anyhow::Result<Self> {
        let mut opt = match cfg.kind {
            OptimKind::Adam => {
                COptimizer::adam(cfg.head_lr, 0.9, 0.999, cfg.weight_decay, 1e-8, false)?
            }
            OptimKind::Adamw => {
                COptimizer::adamw(cfg.head_lr, 0.9, 0.999, cfg.weight_decay, 1e-8, false)?
            }
            OptimKind::Sgd => {
                COptimizer::sgd(cfg.head_lr, cfg.momentum, 0.0, cfg.weight_decay, false)?
            }
        };
        let backbone_lr = match cfg.backbone_lr {
            Some(lr) => lr,
            None if groups.backbone.is_empty() => 0.0,
            None => anyhow::bail!(
                "the method trains backbone tensors but optimizer.backbone_lr is unset \
                 (resolve the run config first)"
            ),
        };
        let lrs = [cfg.head_lr, cfg.adapter_lr, backbone_lr];
        let base_lrs = [lrs[0], lrs[0], lrs[1], lrs[1], lrs[2], lrs[2]];
        let mut params = Vec::new();
        for (role, tensors) in [groups.head, groups.adapter, groups.backbone]
            .into_iter()
            .enumerate()
        {
            // Group 2·role + 1 decays, 2·role does not; indices stay fixed (empty groups).
            for (name, t) in tensors {
                let g = 2 * role + usize::from(decays(&name, &t, cfg, role == 0));
                opt.add_parameters(&t, g)?;
                params.push(t);
            }
        }
        for g in 0..6 {
            // Groups past the last non-empty one do not exist in libtorch: ignore those errors.
            let _ = opt.set_weight_decay_group(g, if g % 2 == 1 { cfg.weight_decay } else { 0.0 });
        }
        let mut o = Self {
            opt,
            base_lrs,
            params,
            cfg: cfg.clone(),
        };
        o.set_epoch(0, 1)?;
        Ok(o)
    }

    /// Learning-rate factor at `epoch` of `epochs` (warm-up, then cosine).
    pub fn factor(&self, epoch: usize, epochs: usize) -> f64 {
        match self.cfg.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let w = self.cfg.warmup_epochs;
                if epoch < w {
                    (epoch + 1) as f64 / (w + 1) as f64
                } else {
                    let t = (epoch - w) as f64 / (epochs.saturating_sub(w)).max(1) as f64;
                    0.5 * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }

    pub fn set_epoch(&mut self, epoch: usize, epochs: usize) -> anyhow::Result<()> {
        let f = self.factor(epoch, epochs);
        for (g, lr) in self.base_lrs.iter().enumerate() {
            if self.params.is_empty() {
                break;
            }
            // Groups without tensors do not exist in libtorch; ignore their errors.
            let _ = self.opt.set_learning_rate_group(g, lr * f);
        }
        Ok(())
    }

    pub fn zero_grad(&self) -> anyhow::Result<()> {
        Ok(self.opt.zero_grad()?)
    }

    /// Unscales the gradients (fp16: `scaler`), skips the step when they are not finite
    /// (fp16 only; elsewhere the loss check has already stopped the run), clips the global
    /// gradient norm if configured, then steps.
    pub fn step(&mut self, scaler: Option<&mut LossScaler>) -> anyhow::Result<StepOutcome> {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        if let Some(s) = scaler {
            if !s.unscale(&grads) {
                return Ok(StepOutcome {
                    grad_norm: f64::NAN,
                    skipped: true,
                });
            }
        }
        let norm = if grads.is_empty() {
            0.0
        } else {
            let sq: Vec<Tensor> = grads
                .iter()
                .map(|g| g.square().sum(tch::Kind::Float))
                .collect();
            Tensor::stack(&sq, 0)
                .sum(tch::Kind::Float)
                .sqrt()
                .double_value(&[])
        };
        if let Some(max) = self.cfg.clip_grad_norm {
            if norm > max {
                let s = max / (norm + 1e-6);
                tch::no_grad(|| {
                    for mut g in grads {
                        let _ = g.f_mul_scalar_(s);
                    }
                });
            }
        }
        self.opt.step()?;
        Ok(StepOutcome {
            grad_norm: norm,
            skipped: false,
        })
    }
}
