//! Parameter groups, the optimisers (Adam, AdamW, SGD with momentum, written out as libtorch's
//! C++ `torch::optim` computes them so that their state can be checkpointed), clipping,
//! dynamic loss scaling (fp16) and the learning-rate schedule.
//!
//! Six groups: (head, adapter, backbone) × (decayed, not decayed). Each role has its own
//! learning rate; weight decay applies only to the decayed half, which holds neither biases,
//! norms, prompts, position/class embeddings, learnable radii nor any 1-D tensor (unless
//! `decay_all`), nor the head (unless `decay_head`).
use crate::config::run::{OptimConfig, OptimKind, Schedule};
use crate::train::precision::LossScaler;
use std::ffi::c_void;
use tch::{Kind, Tensor};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn dka_fused_adam(
        decoupled: i32,
        params: *const *const c_void,
        grads: *const *const c_void,
        exp_avgs: *const *const c_void,
        exp_avg_sqs: *const *const c_void,
        steps: *const *const c_void,
        n: i32,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> i32;
}

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
    /// fp16 only: the gradients were not finite, the step was skipped and the scale halved.
    pub skipped: bool,
}

const BETAS: (f64, f64) = (0.9, 0.999);
const EPS: f64 = 1e-8;

/// One trained tensor and its optimiser state.
struct Param {
    name: String,
    /// Role group 0..6 (see the module docs).
    group: usize,
    t: Tensor,
    /// Adam's first moment or SGD's momentum buffer (created at the first step).
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
    /// Steps taken by this tensor.
    step: i64,
    /// The same count as a float scalar on the tensor's device, which the fused Adam kernel
    /// reads and increments itself (created at the first fused step).
    step_t: Option<Tensor>,
}

pub struct Optimizer {
    params: Vec<Param>,
    /// Learning rate of each of the six groups at the current epoch.
    lrs: [f64; 6],
    /// Base learning rate of each group.
    base_lrs: [f64; 6],
    cfg: OptimConfig,
    /// Adam and AdamW go through libtorch's fused kernel (one launch per group) until it
    /// refuses once; then tensor by tensor, as `torch::optim` computes them.
    fused: bool,
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, groups: Groups) -> anyhow::Result<Self> {
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
            for (name, t) in tensors {
                let group = 2 * role + usize::from(decays(&name, &t, cfg, role == 0));
                params.push(Param {
                    name: format!("{}/{name}", ["head", "adapter", "backbone"][role]),
                    group,
                    t,
                    m: None,
                    v: None,
                    step: 0,
                    step_t: None,
                });
            }
        }
        let mut o = Self {
            params,
            lrs: base_lrs,
            base_lrs,
            cfg: cfg.clone(),
            fused: true,
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

    /// The learning rate each role (head, adapter, backbone) trains at now.
    pub fn role_lrs(&self) -> [f64; 3] {
        [self.lrs[0], self.lrs[2], self.lrs[4]]
    }

    pub fn set_epoch(&mut self, epoch: usize, epochs: usize) -> anyhow::Result<()> {
        let f = self.factor(epoch, epochs);
        for (lr, base) in self.lrs.iter_mut().zip(self.base_lrs) {
            *lr = base * f;
        }
        Ok(())
    }

    pub fn zero_grad(&self) -> anyhow::Result<()> {
        for p in &self.params {
            let mut g = p.t.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
        Ok(())
    }

    /// Unscales the gradients (fp16: `scaler`), skips the step when they are not finite
    /// (fp16 only; elsewhere a non-finite loss stops the run), clips the global gradient norm
    /// if configured, then steps. Nothing here waits for the device but the fp16 scaler's one
    /// finiteness check: the norm and the clipping factor stay on the device.
    pub fn step(&mut self, scaler: Option<&mut LossScaler>) -> anyhow::Result<StepOutcome> {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.t.grad())
            .filter(|g| g.defined())
            .collect();
        if let Some(s) = scaler {
            if !s.unscale(&grads) {
                return Ok(StepOutcome { skipped: true });
            }
        }
        if let Some(max) = self.cfg.clip_grad_norm {
            clip_grad_norm_(&grads, max);
        }
        tch::no_grad(|| match self.cfg.kind {
            OptimKind::Adam | OptimKind::Adamw => self.adam_step(),
            OptimKind::Sgd => {
                for g in 0..6 {
                    self.per_tensor_step(g);
                }
            }
        });
        Ok(StepOutcome { skipped: false })
    }

    /// The weight decay of group `g` (only the decayed halves, the odd groups, have it).
    fn weight_decay(&self, g: usize) -> f64 {
        if g % 2 == 1 {
            self.cfg.weight_decay
        } else {
            0.0
        }
    }

    /// Adam(W) over every group: fused while libtorch takes it, else tensor by tensor.
    fn adam_step(&mut self) {
        for g in 0..6 {
            if !(self.fused && self.fused_adam_group(g)) {
                self.per_tensor_step(g);
            }
        }
    }

    /// One fused Adam(W) launch over group `g`'s tensors that have gradients; false (nothing
    /// changed) when libtorch refuses, after which only the per-tensor path is used.
    fn fused_adam_group(&mut self, g: usize) -> bool {
        let (lr, wd) = (self.lrs[g], self.weight_decay(g));
        let decoupled = i32::from(self.cfg.kind == OptimKind::Adamw);
        let mut members: Vec<(usize, Tensor)> = Vec::new();
        for (i, p) in self.params.iter_mut().enumerate() {
            let grad = p.t.grad();
            if p.group != g || !grad.defined() {
                continue;
            }
            p.m.get_or_insert_with(|| p.t.zeros_like());
            p.v.get_or_insert_with(|| p.t.zeros_like());
            // The kernel reads the step count after this step, as `torch.optim.Adam(fused=True)`
            // passes it (incremented before the call).
            let next = (p.step + 1) as f32;
            match p.step_t.as_mut() {
                Some(s) => {
                    let _ = s.f_add_scalar_(1.0);
                }
                None => p.step_t = Some(Tensor::from(next).to_device(p.t.device())),
            }
            members.push((i, grad));
        }
        if members.is_empty() {
            return true;
        }
        let ptrs = |f: &dyn Fn(&Param) -> *const c_void| -> Vec<*const c_void> {
            members.iter().map(|(i, _)| f(&self.params[*i])).collect()
        };
        let params = ptrs(&|p| p.t.as_ptr() as *const c_void);
        let exp_avgs = ptrs(&|p| p.m.as_ref().expect("created above").as_ptr() as *const c_void);
        let exp_avg_sqs = ptrs(&|p| p.v.as_ref().expect("created above").as_ptr() as *const c_void);
        let steps = ptrs(&|p| p.step_t.as_ref().expect("created above").as_ptr() as *const c_void);
        let grads: Vec<*const c_void> = members
            .iter()
            .map(|(_, g)| g.as_ptr() as *const c_void)
            .collect();
        // SAFETY: every pointer is a live tch tensor handle (`at::Tensor*`) owned by `self` or
        // `members` for the duration of the call; the shim catches every C++ exception.
        let rc = unsafe {
            dka_fused_adam(
                decoupled,
                params.as_ptr(),
                grads.as_ptr(),
                exp_avgs.as_ptr(),
                exp_avg_sqs.as_ptr(),
                steps.as_ptr(),
                members.len() as i32,
                lr,
                BETAS.0,
                BETAS.1,
                wd,
                EPS,
            )
        };
        if rc != 0 {
            tracing::debug!("libtorch's fused Adam refused; the optimiser steps tensor by tensor");
            for (i, _) in &members {
                if let Some(s) = self.params[*i].step_t.as_mut() {
                    let _ = s.f_sub_scalar_(1.0);
                }
            }
            self.fused = false;
            return false;
        }
        for (i, _) in &members {
            self.params[*i].step += 1;
        }
        true
    }

    /// Group `g`'s tensors one by one, as libtorch's `torch::optim` computes them.
    fn per_tensor_step(&mut self, g: usize) {
        let (lr, wd) = (self.lrs[g], self.weight_decay(g));
        let (kind, momentum) = (self.cfg.kind, self.cfg.momentum);
        for p in self.params.iter_mut().filter(|p| p.group == g) {
            let grad = p.t.grad();
            if !grad.defined() {
                continue;
            }
            p.step += 1;
            if let Some(s) = p.step_t.as_mut() {
                let _ = s.f_add_scalar_(1.0);
            }
            update(kind, momentum, p, grad, lr, wd);
        }
    }

    /// The optimiser state as named tensors (`<param>.m`, `<param>.v`, `<param>.step`), for
    /// checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            if let Some(m) = &p.m {
                out.push((format!("{}.m", p.name), m.shallow_clone()));
            }
            if let Some(v) = &p.v {
                out.push((format!("{}.v", p.name), v.shallow_clone()));
            }
            out.push((format!("{}.step", p.name), Tensor::from(p.step)));
        }
        out
    }

    /// Restores [`Self::state`]; every tensor named in it must belong to this optimiser.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let by: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for p in self.params.iter_mut() {
            let dev = p.t.device();
            p.m = by
                .get(format!("{}.m", p.name).as_str())
                .map(|t| t.to_device(dev));
            p.v = by
                .get(format!("{}.v", p.name).as_str())
                .map(|t| t.to_device(dev));
            p.step = by
                .get(format!("{}.step", p.name).as_str())
                .map_or(0, |t| t.int64_value(&[]));
            p.step_t = None;
        }
        let known: std::collections::HashSet<String> = self
            .params
            .iter()
            .flat_map(|p| ["m", "v", "step"].map(|s| format!("{}.{s}", p.name)))
            .collect();
        if let Some((n, _)) = state.iter().find(|(n, _)| !known.contains(n)) {
            anyhow::bail!(
                "the checkpoint's optimiser state has {n}, which this model does not train"
            );
        }
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_`: every gradient times `min(1, max / (‖g‖ + 1e-6))`, `‖g‖`
/// the global L2 norm, all on the device (no value read back).
fn clip_grad_norm_(grads: &[Tensor], max: f64) {
    if grads.is_empty() {
        return;
    }
    tch::no_grad(|| {
        let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
        let coef = ((norm + 1e-6).reciprocal() * max).clamp_max(1.0);
        for g in grads {
            let _ = g.shallow_clone().f_mul_(&coef);
        }
    });
}

/// One tensor's update, as libtorch's `torch::optim` computes it.
fn update(kind: OptimKind, momentum: f64, p: &mut Param, g: Tensor, lr: f64, wd: f64) {
    match kind {
        OptimKind::Adam | OptimKind::Adamw => {
            let g = if kind == OptimKind::Adam && wd != 0.0 {
                g + &p.t * wd
            } else {
                g
            };
            if kind == OptimKind::Adamw && wd != 0.0 {
                let _ = p.t.f_mul_scalar_(1.0 - lr * wd);
            }
            let m = p.m.get_or_insert_with(|| p.t.zeros_like());
            let v = p.v.get_or_insert_with(|| p.t.zeros_like());
            let _ = m.f_mul_scalar_(BETAS.0);
            let _ = m.f_add_(&(&g * (1.0 - BETAS.0)));
            let _ = v.f_mul_scalar_(BETAS.1);
            let _ = v.f_add_(&(g.square() * (1.0 - BETAS.1)));
            let bc1 = 1.0 - BETAS.0.powi(p.step as i32);
            let bc2 = 1.0 - BETAS.1.powi(p.step as i32);
            let denom = v.sqrt() / bc2.sqrt() + EPS;
            let _ = p.t.f_addcdiv_(&(&*m * (-lr / bc1)), &denom);
        }
        OptimKind::Sgd => {
            let g = if wd != 0.0 { g + &p.t * wd } else { g };
            let d = if momentum != 0.0 {
                match &mut p.m {
                    Some(buf) => {
                        let _ = buf.f_mul_scalar_(momentum);
                        let _ = buf.f_add_(&g);
                        buf.shallow_clone()
                    }
                    None => {
                        let buf = g.copy();
                        p.m = Some(buf.shallow_clone());
                        buf
                    }
                }
            } else {
                g
            };
            let _ = p.t.f_add_(&(d * -lr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{COptimizer, Device};

    /// Our update equals libtorch's own optimiser on the same tensors and gradients.
    /// The fused kernel is what runs on the CPU here (it did not fall back), and it computes
    /// what the per-tensor path computes, within round-off, with two parameter groups and
    /// clipping on.
    #[test]
    fn fused_adam_runs_and_matches_the_per_tensor_path() {
        for kind in [OptimKind::Adam, OptimKind::Adamw] {
            tch::manual_seed(1);
            let init = [
                Tensor::randn([4, 3], (Kind::Float, Device::Cpu)),
                Tensor::randn([6], (Kind::Float, Device::Cpu)),
            ];
            let make = || {
                let ts: Vec<Tensor> = init
                    .iter()
                    .map(|t| t.copy().set_requires_grad(true))
                    .collect();
                let cfg = OptimConfig {
                    kind,
                    weight_decay: 0.05,
                    clip_grad_norm: Some(0.5),
                    ..Default::default()
                };
                let groups = Groups {
                    adapter: vec![
                        ("w".into(), ts[0].shallow_clone()),
                        ("b".into(), ts[1].shallow_clone()),
                    ],
                    ..Default::default()
                };
                (ts, Optimizer::new(&cfg, groups).unwrap())
            };
            let (a, mut fused) = make();
            let (b, mut plain) = make();
            plain.fused = false;
            for k in 0..6 {
                let target = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)) * (k + 1);
                for (ts, opt) in [(&a, &mut fused), (&b, &mut plain)] {
                    opt.zero_grad().unwrap();
                    ((&ts[0] - &target).square().sum(Kind::Float)
                        + ts[1].square().sum(Kind::Float))
                    .backward();
                    opt.step(None).unwrap();
                }
            }
            assert!(fused.fused, "{kind:?}: libtorch's fused kernel ran");
            for (x, y) in a.iter().zip(&b) {
                let diff = (x - y).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{kind:?}: fused vs per tensor {diff}");
            }
            assert_eq!(fused.params[0].step, 6);
        }
    }

    #[test]
    fn matches_libtorchs_optimisers() {
        for (kind, wd) in [
            (OptimKind::Adam, 0.0),
            (OptimKind::Adam, 0.05),
            (OptimKind::Adamw, 0.05),
            (OptimKind::Sgd, 0.0),
            (OptimKind::Sgd, 0.01),
        ] {
            tch::manual_seed(0);
            let init = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
            let ours = init.copy().set_requires_grad(true);
            let theirs = init.copy().set_requires_grad(true);
            let cfg = OptimConfig {
                kind,
                head_lr: 0.01,
                weight_decay: wd,
                decay_head: true,
                clip_grad_norm: None,
                ..Default::default()
            };
            let mut a = Optimizer::new(
                &cfg,
                Groups {
                    head: vec![("w".into(), ours.shallow_clone())],
                    ..Default::default()
                },
            )
            .unwrap();
            let mut b = match kind {
                OptimKind::Adam => COptimizer::adam(0.01, 0.9, 0.999, wd, 1e-8, false),
                OptimKind::Adamw => COptimizer::adamw(0.01, 0.9, 0.999, wd, 1e-8, false),
                OptimKind::Sgd => COptimizer::sgd(0.01, 0.9, 0.0, wd, false),
            }
            .unwrap();
            b.add_parameters(&theirs, 0).unwrap();
            for k in 0..5 {
                let target = Tensor::randn([5, 3], (Kind::Float, Device::Cpu)) * (k + 1);
                for (t, step) in [(&ours, 0), (&theirs, 1)] {
                    let loss = (t - &target).square().sum(Kind::Float);
                    if step == 0 {
                        a.zero_grad().unwrap();
                        loss.backward();
                        a.step(None).unwrap();
                    } else {
                        b.zero_grad().unwrap();
                        loss.backward();
                        b.step().unwrap();
                    }
                }
            }
            let diff = (&ours - &theirs).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{kind:?} wd {wd}: max diff {diff}");
        }
    }

    #[test]
    fn state_round_trips() {
        let t = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let groups = || Groups {
            adapter: vec![("a".into(), t.shallow_clone())],
            ..Default::default()
        };
        let mut o = Optimizer::new(&OptimConfig::default(), groups()).unwrap();
        (&t * 3.0).sum(Kind::Float).backward();
        o.step(None).unwrap();
        let state = o.state();
        let mut p = Optimizer::new(&OptimConfig::default(), groups()).unwrap();
        p.load_state(&state).unwrap();
        assert_eq!(p.params[0].step, 1);
        assert!(p.params[0]
            .m
            .as_ref()
            .unwrap()
            .equal(o.params[0].m.as_ref().unwrap()));
        let bad = vec![("adapter/x.m".to_string(), Tensor::from(1.0))];
        assert!(p.load_state(&bad).is_err());
    }
}
