//! Parameter groups over libtorch's optimisers, clipping and the learning-rate schedule.
use crate::run_config::{OptimConfig, OptimKind, Schedule};
use tch::{COptimizer, Tensor};

/// Parameter groups: the task head, the method's modules, trained backbone tensors.
pub struct Groups {
    pub head: Vec<Tensor>,
    pub adapter: Vec<Tensor>,
    pub backbone: Vec<Tensor>,
}

pub struct Optimizer {
    opt: COptimizer,
    base_lrs: [f64; 3],
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
        let base_lrs = [
            cfg.head_lr,
            cfg.adapter_lr,
            cfg.backbone_lr.unwrap_or(cfg.adapter_lr),
        ];
        let mut params = Vec::new();
        for (g, tensors) in [groups.head, groups.adapter, groups.backbone]
            .into_iter()
            .enumerate()
        {
            // Every group exists (possibly empty) so that group indices stay fixed.
            for t in &tensors {
                opt.add_parameters(t, g)?;
            }
            params.extend(tensors);
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

    /// Clips the global gradient norm if configured, then steps. Returns the norm before
    /// clipping.
    pub fn step(&mut self) -> anyhow::Result<f64> {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
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
        Ok(norm)
    }
}
