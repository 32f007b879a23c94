//! Mixed precision: autocast in bf16 or fp16 (through a small C++ shim, `csrc/shim.cpp`,
//! since tch only toggles CUDA autocast in libtorch's default fp16) and dynamic loss scaling
//! for fp16.
//!
//! Under autocast, matmuls and convolutions run in the reduced type while weights, gradients
//! and optimiser state stay fp32; the loss is computed in fp32. bf16 has fp32's exponent range
//! and needs no loss scaling; fp16 does: [`LossScaler`] multiplies the loss, unscales the
//! gradients, skips a step whose gradients are not finite and halves the scale (PyTorch's
//! `GradScaler` defaults: initial scale 2^16, growth ×2 after 2000 good steps, backoff ½).
use crate::config::run::Precision;
use tch::{Device, Kind, Tensor};

extern "C" {
    fn dka_autocast_set(cuda: i32, enabled: i32, bf16: i32) -> i32;
    fn dka_autocast_increment_nesting() -> i32;
    fn dka_autocast_decrement_nesting() -> i32;
    fn dka_unscale_check(
        grads: *const *const std::ffi::c_void,
        n: i32,
        found_inf: *const std::ffi::c_void,
        inv_scale: *const std::ffi::c_void,
    ) -> i32;
}

/// The autocast setting of a run: off, or a reduced type on the run's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amp {
    device: Device,
    /// `None`: fp32, no autocast.
    reduced: Option<Kind>,
}

impl Amp {
    /// From a resolved precision (`Auto` must have been resolved: it is treated as fp32).
    pub fn new(precision: Precision, device: Device) -> Self {
        let reduced = match precision {
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
            Precision::Fp32 | Precision::Auto => None,
        };
        Self { device, reduced }
    }

    /// bf16 autocast on the CPU (tests of the mixed-precision path on machines without a GPU).
    pub fn cpu_bf16() -> Self {
        Self {
            device: Device::Cpu,
            reduced: Some(Kind::BFloat16),
        }
    }

    /// The type activations (and cached features) have under this setting.
    pub fn kind(&self) -> Kind {
        self.reduced.unwrap_or(Kind::Float)
    }

    pub fn needs_loss_scaling(&self) -> bool {
        self.reduced == Some(Kind::Half)
    }

    /// Runs `f` under autocast (nothing changes when off). Nested calls are fine.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(kind) = self.reduced else {
            return f();
        };
        let cuda = i32::from(self.device.is_cuda());
        let bf16 = i32::from(kind == Kind::BFloat16);
        // SAFETY: plain C functions of the shim; they catch every C++ exception.
        let prev = unsafe {
            let prev = dka_autocast_set(cuda, 1, bf16);
            dka_autocast_increment_nesting();
            prev
        };
        struct Restore {
            cuda: i32,
            bf16: i32,
            prev: i32,
        }
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: as above.
                unsafe {
                    dka_autocast_decrement_nesting();
                    dka_autocast_set(self.cuda, i32::from(self.prev == 1), self.bf16);
                }
            }
        }
        let _restore = Restore { cuda, bf16, prev };
        let _mark = dka_core::reduced::AutocastMark::enter(kind);
        f()
    }
}

/// The loss scaler's state, for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalerState {
    pub scale: f64,
    pub good_steps: usize,
    pub skipped: usize,
    pub consecutive_skips: usize,
}

/// Dynamic loss scaling for fp16 training.
#[derive(Debug, Clone)]
pub struct LossScaler {
    scale: f64,
    growth_interval: usize,
    good_steps: usize,
    /// Steps skipped because their gradients were not finite, over the whole run.
    pub skipped: usize,
    /// Consecutive skipped steps (a run that never recovers is stopped by the trainer).
    pub consecutive_skips: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new(65536.0, 2000)
    }
}

impl LossScaler {
    pub fn new(initial_scale: f64, growth_interval: usize) -> Self {
        Self {
            scale: initial_scale,
            growth_interval,
            good_steps: 0,
            skipped: 0,
            consecutive_skips: 0,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn state(&self) -> ScalerState {
        ScalerState {
            scale: self.scale,
            good_steps: self.good_steps,
            skipped: self.skipped,
            consecutive_skips: self.consecutive_skips,
        }
    }

    pub fn restore(&mut self, s: ScalerState) {
        self.scale = s.scale;
        self.good_steps = s.good_steps;
        self.skipped = s.skipped;
        self.consecutive_skips = s.consecutive_skips;
    }

    /// The loss to back-propagate.
    pub fn scaled(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides the gradients by the scale in place and updates the scale. `false` (skip the
    /// step) when any gradient is not finite: the scale halves. After `growth_interval`
    /// finite steps in a row it doubles.
    pub fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let finite = tch::no_grad(|| unscale_all_finite(grads, 1.0 / self.scale));
        if finite {
            self.consecutive_skips = 0;
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.skipped += 1;
            self.consecutive_skips += 1;
            self.good_steps = 0;
            self.scale = (self.scale / 2.0).max(f64::MIN_POSITIVE);
        }
        finite
    }
}

/// Multiplies every gradient by `inv_scale` in place and says whether all are finite, with
/// one value read back from the device: AMP's fused unscale-and-check where libtorch has it,
/// else the same per tensor with the flags gathered on the device.
fn unscale_all_finite(grads: &[Tensor], inv_scale: f64) -> bool {
    let Some(first) = grads.first() else {
        return true;
    };
    let dev = first.device();
    let found_inf = Tensor::zeros([1], (Kind::Float, dev));
    let inv = Tensor::from_slice(&[inv_scale as f32]).to_device(dev);
    let ptrs: Vec<*const std::ffi::c_void> = grads
        .iter()
        .map(|g| g.as_ptr() as *const std::ffi::c_void)
        .collect();
    let fused = grads.iter().all(|g| g.kind() == Kind::Float)
        // SAFETY: live tch tensor handles for the duration of the call; the shim catches every
        // C++ exception and changes nothing when it fails.
        && unsafe {
            dka_unscale_check(
                ptrs.as_ptr(),
                ptrs.len() as i32,
                found_inf.as_ptr() as *const std::ffi::c_void,
                inv.as_ptr() as *const std::ffi::c_void,
            )
        } == 0;
    if fused {
        return found_inf.double_value(&[0]) == 0.0;
    }
    let flags: Vec<Tensor> = grads
        .iter()
        .map(|g| {
            let _ = g.shallow_clone().f_mul_scalar_(inv_scale);
            g.isfinite().all()
        })
        .collect();
    Tensor::stack(&flags, 0).all().int64_value(&[]) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaler_skips_non_finite_steps_and_backs_off_then_grows() {
        let mut s = LossScaler::new(8.0, 2);
        let g = Tensor::from_slice(&[8.0f32, 16.0]);
        assert!(s.unscale(&[g.shallow_clone()]));
        assert_eq!(
            Vec::<f32>::try_from(&g).unwrap(),
            [1.0, 2.0],
            "unscaled in place"
        );
        assert_eq!(s.scale(), 8.0);
        assert!(s.unscale(&[Tensor::from_slice(&[1.0f32])]));
        assert_eq!(s.scale(), 16.0, "doubles after growth_interval good steps");
        assert!(!s.unscale(&[Tensor::from_slice(&[f32::INFINITY, 1.0])]));
        assert!(!s.unscale(&[Tensor::from_slice(&[f32::NAN])]));
        assert_eq!((s.scale(), s.skipped, s.consecutive_skips), (4.0, 2, 2));
        assert!(s.unscale(&[Tensor::from_slice(&[1.0f32])]));
        assert_eq!((s.consecutive_skips, s.skipped), (0, 2));
    }

    #[test]
    fn cpu_bf16_autocast_runs_matmuls_in_bf16_and_restores_the_state() {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let amp = Amp::cpu_bf16();
        let y = amp.run(|| a.matmul(&b));
        assert_eq!(y.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast is off again");
        let off = Amp::new(Precision::Fp32, Device::Cpu);
        assert_eq!(off.run(|| a.matmul(&b)).kind(), Kind::Float);
    }

    /// Under bf16 autocast a frozen Linear through `dka_core::reduced`'s kept casts gives the
    /// same output and input gradient, bit for bit, as the Linear with autocast casting its
    /// weight at every call; a trainable bias (BitFit) stays autocast's to cast.
    #[test]
    fn kept_casts_of_frozen_weights_give_autocasts_linear_bit_for_bit() {
        use dka_core::reduced::{linear, FrozenCasts};
        use tch::nn;
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut layer = nn::linear(vs.root() / "l", 16, 8, Default::default());
        let amp = Amp::cpu_bf16();
        for frozen_bias in [true, false] {
            layer.ws = layer.ws.detach();
            let b = layer.bs.take().unwrap().detach();
            layer.bs = Some(b.set_requires_grad(!frozen_bias));
            let x = Tensor::randn([5, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let run = |kept: bool| {
                let scope = kept.then(|| FrozenCasts::keep(Kind::BFloat16));
                let y = amp.run(|| linear(&layer, &x));
                let loss = y.to_kind(Kind::Float).sum(Kind::Float);
                let g = Tensor::run_backward(&[loss], &[&x], false, false);
                let held = scope.map_or(0, |s| s.len());
                (y.detach(), g[0].shallow_clone(), held)
            };
            let (y0, g0, _) = run(false);
            let (y1, g1, held) = run(true);
            assert_eq!(y0.kind(), Kind::BFloat16, "autocast ran the Linear in bf16");
            assert_eq!(
                held,
                if frozen_bias { 2 } else { 1 },
                "weight (and frozen bias) kept"
            );
            assert!(y0.equal(&y1), "outputs differ (frozen bias: {frozen_bias})");
            assert!(
                g0.equal(&g1),
                "input gradients differ (frozen bias: {frozen_bias})"
            );
        }
    }
    /// The same for convolutions, through whole frozen backbones: a TinyViT (its conv+BN
    /// layers, the strided depthwise convs of its merges, its SAM neck; an 8x8 grid in one
    /// padded 10x10 window) and a bottleneck ResNet (stem, 1x1 and strided 3x3 convs,
    /// downsampling shortcuts). Under bf16 autocast their features and input gradients with
    /// the kept casts equal those with autocast casting every weight at every call, bit for
    /// bit. (Each conv's geometry is checked against the reference in fp32 by the parity tests.)
    #[test]
    fn kept_casts_of_frozen_conv_weights_give_autocasts_backbones_bit_for_bit() {
        for json in [
            r#"{"arch":"tinyvit","img_size":32,"embed_dims":[8,16,16,24],"depths":[1,1,1,1],"num_heads":[1,2,2,2],"window_sizes":[3,3,3,10],"merge_strides":[2,2,1],"mlp_ratio":2.0,"mbconv_expand_ratio":2.0,"neck_chans":16}"#,
            r#"{"arch":"resnet","block":"bottleneck","layers":[1,1,1,1],"channels":[4,4,8,8],"num_classes":0}"#,
        ] {
            kept_conv_casts_change_nothing(json);
        }
    }

    fn kept_conv_casts_change_nothing(json: &str) {
        use dka_core::reduced::FrozenCasts;
        use dka_core::{Backbone, BackboneConfig};
        use tch::nn;
        let cfg = BackboneConfig::from_json_str(json).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = Backbone::new(&vs.root(), &cfg).unwrap();
        vs.freeze();
        let amp = Amp::cpu_bf16();
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let run = |kept: bool| {
            let scope = kept.then(|| FrozenCasts::keep(Kind::BFloat16));
            let y = amp.run(|| model.forward_features(&x, true).x);
            let loss = y.to_kind(Kind::Float).square().sum(Kind::Float);
            let g = Tensor::run_backward(&[loss], &[&x], false, false);
            let held = scope.map_or(0, |s| s.len());
            (y.detach(), g[0].shallow_clone(), held)
        };
        let (y0, g0, _) = run(false);
        let (y1, g1, held) = run(true);
        assert!(held > 0, "{json}: frozen weights were kept");
        assert!(y0.equal(&y1), "{json}: features differ");
        assert!(g0.equal(&g1), "{json}: input gradients differ");
    }
}
