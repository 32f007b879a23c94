//! DKA's depthwise convolutions on a `[batch, channels, h, w]` map: a large and a small kernel
//! (either may be absent), or one learnable-size kernel, with an exact fast path.
//!
//! Reference path: each branch is its own `conv2d(groups = channels)` with its full kernel,
//! in PyTorch's default (NCHW) layout, as the authors' code runs it.
//!
//! Fast paths (equal up to float round-off; `tests/dka_fast_path.rs` checks outputs and the
//! gradients of input and both kernels):
//! 1. both branches are linear in the same input, so `DW_L(z) + DW_S(z) = DW_M(z)` with
//!    `M = K_L + pad(K_S)`; `M` is built inside the graph, so gradients reach both kernels;
//! 2. a tap more than `h-1` rows or `w-1` columns from the centre only ever multiplies
//!    padding: the kernel is cropped to at most `(2h-1) x (2w-1)`;
//! 3. the cropped kernel runs as a direct depthwise conv in channels-last layout, or, when
//!    it is large against the map, as an FFT convolution (circular, of the smallest size at
//!    which the wrap-around only ever reads zero padding), on small maps with the height as a
//!    Toeplitz product, or as the map's full Toeplitz product (`paths.rs`); [`ConvPath`]
//!    picks by a fixed rule, or by measuring on the machine (`tune.rs`);
//! 4. inside a backbone block ([`crate::sites::BlockScope`]) the kernel's spectrum is computed
//!    once for all of a module's applications there ("mona" applies one module twice per
//!    block), which also keeps one copy of it for the backward instead of two.
use super::paths::{
    channels_last, direct_depthwise, fft_depthwise_with, fit_kernel, work_kind, KernelSpectrum,
    RowToeplitz, Toeplitz2d,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How the depthwise convolutions are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvPath {
    /// The fastest exact path for each shape (see [`ConvPath::choose`]).
    #[default]
    Auto,
    /// One conv per branch, full kernels, NCHW: the plain implementation.
    Reference,
    /// Merged, cropped kernel; direct depthwise conv in channels-last layout.
    Direct,
    /// Merged, cropped kernel; FFT convolution.
    Fft,
    /// Merged, cropped kernel; FFT along the width only, and along the height the kernel's
    /// `h x h` Toeplitz matrix per channel and width frequency, as one batched matrix product
    /// (see `RowToeplitz`): no transform of the zero-padded height, for small maps.
    FftToeplitz,
    /// Merged kernel as the map's full `hw x hw` Toeplitz matrix per channel (see
    /// `Toeplitz2d`), as one batched matrix product: exactly the multiply-adds the map has
    /// (`hw` per output, against the cropped kernel's `kh*kw`), for tiny maps.
    Toeplitz,
    /// The fastest of the exact paths for each shape, measured on this machine and device at
    /// the first map of that shape and kept for the process (see `tune.rs`): a choice that
    /// follows the hardware, at the price that two processes may choose differently where two
    /// paths are close (results then differ at float round-off).
    Tuned,
}

impl ConvPath {
    /// Direct convolution costs `kh*kw` multiply-adds per output; FFT costs a few `log2` of
    /// the padded area per output, with a larger constant. Measured on 2 CPU cores
    /// (`results/bench/dka_conv.csv`): FFT already wins for the 27x27 cropped kernel on
    /// ViT-B's 14x14 grid and by far on larger maps; direct stays for small kernels.
    ///
    /// On small maps (height up to 16 rows: ViT-B/16's 14x14 grid at 224) the FFT along the
    /// height costs more than it saves: its transforms run on the zero-padded height (32 rows
    /// for 14) and back, in the forward and the backward. There the height is done as a
    /// matrix product instead ([`ConvPath::FftToeplitz`]); its matrices grow as `h^2`, so
    /// larger maps keep the full FFT.
    pub fn choose(self, kh: i64, kw: i64, h: i64, w: i64) -> ConvPath {
        match self {
            ConvPath::Auto => {
                if kh * kw < 225 {
                    ConvPath::Direct
                } else if h <= 16 {
                    ConvPath::FftToeplitz
                } else {
                    ConvPath::Fft
                }
            }
            // Measured per map in `Kernels::forward`; without a map, the fixed rule.
            ConvPath::Tuned => ConvPath::Auto.choose(kh, kw, h, w),
            p => p,
        }
    }
}

/// What a spectrum is kept under in a block's memo: the module's address, the map's height
/// and width, grad mode, f64.
type SpectrumKey = (usize, i64, i64, bool, bool);

/// Radial mask `sigmoid((rho_c - r) / tau)` over a `k x k` kernel: `[c, 1, k, k]`, `r` the
/// tap's Euclidean distance from the centre (in `rho`'s dtype).
pub fn radial_mask(rho: &Tensor, k: i64, tau: f64) -> Tensor {
    let opts = (rho.kind(), rho.device());
    let a = Tensor::arange(k, opts) - (k / 2) as f64;
    let r = (a.unsqueeze(1).square() + a.unsqueeze(0).square()).sqrt();
    ((rho.view([-1, 1, 1, 1]) - r.view([1, 1, k, k])) / tau).sigmoid()
}

/// The kernels of one DKA module.
#[derive(Debug)]
pub enum Kernels {
    /// Fixed-size branches; `None` = branch absent. Kernels are `[c, 1, k, k]`.
    Fixed {
        large: Option<(Tensor, Option<Tensor>)>,
        small: Option<(Tensor, Option<Tensor>)>,
    },
    /// One `k_max` kernel times a learnable radial mask, radius per channel
    /// `ρ_c = init_radius + scale · θ_c` (see [`LearnableRadius`]).
    Learnable {
        kernel: Tensor,
        bias: Option<Tensor>,
        radius: LearnableRadius,
        tau: f64,
    },
}

/// A per-channel radius in a normalised parametrisation: the trained tensor is the unitless
/// `θ` (`[c]`, starts at 0) and `ρ = init_radius + scale · θ`, with `scale = k_max / 2` in
/// DKA. Adam moves every parameter by about its learning rate per step whatever the gradient's
/// magnitude, so a radius stored in pixels would move ~1e-3 px per step at DKA's lr 1e-3 and
/// never learn; in units of half a kernel, 1000 steps can cross the whole kernel.
#[derive(Debug)]
pub struct LearnableRadius {
    pub theta: Tensor,
    pub init_radius: f64,
    pub scale: f64,
}

impl LearnableRadius {
    /// `ρ = init_radius + scale · θ`, in the graph (gradients reach `θ`).
    pub fn radius(&self) -> Tensor {
        &self.theta * self.scale + self.init_radius
    }
}

impl Kernels {
    /// Side of the largest kernel.
    fn size(&self) -> i64 {
        match self {
            Kernels::Learnable { kernel, .. } => kernel.size()[2],
            Kernels::Fixed { large, small } => [large, small]
                .into_iter()
                .flatten()
                .map(|(w, _)| w.size()[2])
                .max()
                .expect("at least one branch"),
        }
    }

    /// The effective kernel fitted (cropped or zero-padded about its centre) to `kh x kw`, and
    /// the summed bias. Each branch is cropped before the sum, so no full-size kernel is built
    /// when the map is small.
    fn merged(&self, kh: i64, kw: i64) -> (Tensor, Option<Tensor>) {
        match self {
            Kernels::Learnable {
                kernel,
                bias,
                radius,
                tau,
            } => {
                let k = kernel.size()[2];
                (
                    fit_kernel(&(kernel * radial_mask(&radius.radius(), k, *tau)), kh, kw),
                    bias.as_ref().map(|b| b.shallow_clone()),
                )
            }
            Kernels::Fixed { large, small } => {
                let parts: Vec<&(Tensor, Option<Tensor>)> =
                    [large, small].into_iter().flatten().collect();
                let w = parts
                    .iter()
                    .map(|(w, _)| fit_kernel(w, kh, kw))
                    .reduce(|a, b| a + b)
                    .expect("at least one branch");
                let b = parts
                    .iter()
                    .filter_map(|(_, b)| b.as_ref().map(|b| b.shallow_clone()))
                    .reduce(|a, b| a + b);
                (w, b)
            }
        }
    }

    /// The merged kernel prepared for an `h x w` map by `make` (its spectrum, or its row
    /// Toeplitz matrices) with the summed bias: inside a backbone block
    /// ([`crate::sites::BlockScope`]) computed once per module, map size and grad mode and
    /// kept for the block's other applications of the module (DKA's "mona" placement: after
    /// the attention and after the MLP), so autograd sums both uses' gradients before the one
    /// backward through the kernel's FFT; outside any block, computed and not kept. The
    /// kernels cannot change inside a block (no optimiser step runs in a forward).
    fn prepared<V: 'static>(
        &self,
        (kh, kw, h, w): (i64, i64, i64, i64),
        kind: Kind,
        make: impl FnOnce(&Tensor) -> V,
    ) -> std::rc::Rc<(V, Option<Tensor>)> {
        let compute = || {
            let (m, b) = self.merged(kh, kw);
            (make(&m), b)
        };
        if !crate::sites::BlockScope::is_open() {
            return std::rc::Rc::new(compute());
        }
        let probe = match self {
            Kernels::Learnable { kernel, .. } => kernel,
            Kernels::Fixed { large, small } => {
                &large
                    .as_ref()
                    .or(small.as_ref())
                    .expect("at least one branch")
                    .0
            }
        };
        // Whether a spectrum computed now would be in the graph: a view made under no_grad does
        // not require grad even when its base does.
        let grad = probe.requires_grad() && probe.narrow(0, 0, 1).requires_grad();
        let key: SpectrumKey = (
            self as *const Self as usize,
            h,
            w,
            grad,
            work_kind(kind) == Kind::Double,
        );
        crate::sites::block_memo(key, compute).expect("a block scope is open")
    }

    /// The large and the small branch's outputs on `z` separately (each kernel cropped to
    /// what a map of this size can reach), for `dka inspect`; `None` unless both branches are
    /// fixed-size and present.
    pub fn branch_outputs(&self, z: &Tensor) -> Option<(Tensor, Tensor)> {
        let Kernels::Fixed {
            large: Some(large),
            small: Some(small),
        } = self
        else {
            return None;
        };
        let (_, _, h, w) = z.size4().ok()?;
        let z = z.contiguous();
        let one = |(k, b): &(Tensor, Option<Tensor>)| {
            let s = k.size()[2];
            let kernel = fit_kernel(k, s.min(2 * h - 1), s.min(2 * w - 1));
            direct_depthwise(&z, &kernel.to_kind(z.kind()), b.as_ref())
        };
        Some((one(large), one(small)))
    }

    /// Plain implementation: one conv per branch with its full kernel.
    pub fn forward_reference(&self, z: &Tensor) -> Tensor {
        let z = z.contiguous();
        match self {
            Kernels::Fixed { large, small } => [large, small]
                .into_iter()
                .flatten()
                .map(|(w, b)| direct_depthwise(&z, w, b.as_ref()))
                .reduce(|a, b| a + b)
                .expect("at least one branch"),
            Kernels::Learnable { .. } => {
                let k = self.size();
                let (w, b) = self.merged(k, k);
                direct_depthwise(&z, &w, b.as_ref())
            }
        }
    }

    /// Fast exact implementation (merge, crop, then direct channels-last or FFT).
    pub fn forward(&self, z: &Tensor, path: ConvPath) -> Tensor {
        if path == ConvPath::Reference {
            return self.forward_reference(z);
        }
        let (_, _, h, w) = z.size4().expect("map is 4-D");
        let k = self.size();
        let (kh, kw) = (k.min(2 * h - 1), k.min(2 * w - 1));
        let path = match path {
            ConvPath::Tuned => super::tune::choose(z, kh, kw),
            p => p.choose(kh, kw, h, w),
        };
        match path {
            ConvPath::Fft => {
                let k = self.prepared((kh, kw, h, w), z.kind(), |m| {
                    KernelSpectrum::new(m, h, w, z.kind())
                });
                fft_depthwise_with(z, &k.0, k.1.as_ref())
            }
            ConvPath::FftToeplitz => {
                let k = self.prepared((kh, kw, h, w), z.kind(), |m| {
                    RowToeplitz::new(m, h, w, z.kind())
                });
                k.0.apply(z, k.1.as_ref())
            }
            ConvPath::Toeplitz => {
                let k = self.prepared((kh, kw, h, w), z.kind(), |m| {
                    Toeplitz2d::new(m, h, w, z.kind())
                });
                k.0.apply(z, k.1.as_ref())
            }
            _ => {
                let (m, b) = self.merged(kh, kw);
                direct_depthwise(&channels_last(z), &m, b.as_ref())
            }
        }
    }

    /// Learned radii per channel in pixels (learnable kernels only).
    pub fn radii(&self) -> Option<Tensor> {
        match self {
            Kernels::Learnable { radius, .. } => Some(radius.radius().detach()),
            Kernels::Fixed { .. } => None,
        }
    }
}
