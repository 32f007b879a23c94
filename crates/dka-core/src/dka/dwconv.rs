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
//!    which the wrap-around only ever reads zero padding: see [`fft_depthwise`]);
//! 4. inside a backbone block ([`crate::sites::BlockScope`]) the kernel's spectrum is computed
//!    once for all of a module's applications there ("mona" applies one module twice per
//!    block), which also keeps one copy of it for the backward instead of two.
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
    /// (see [`RowToeplitz`]): no transform of the zero-padded height, for small maps.
    FftToeplitz,
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
    pub fn choose(self, kh: i64, kw: i64, h: i64, _w: i64) -> ConvPath {
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
            p => p,
        }
    }
}

/// Centre-crops or zero-pads a `[c, 1, k1, k2]` kernel to `[c, 1, kh, kw]` (odd sizes).
pub fn fit_kernel(k: &Tensor, kh: i64, kw: i64) -> Tensor {
    let s = k.size();
    let (k1, k2) = (s[2], s[3]);
    let mut k = k.shallow_clone();
    if k1 > kh {
        k = k.narrow(2, (k1 - kh) / 2, kh);
    }
    if k2 > kw {
        k = k.narrow(3, (k2 - kw) / 2, kw);
    }
    let (ph, pw) = ((kh - k1).max(0) / 2, (kw - k2).max(0) / 2);
    if ph > 0 || pw > 0 {
        k = k.constant_pad_nd([pw, pw, ph, ph]);
    }
    k
}

/// The FFT length for a transform of at least `min` points: an even `2^a 3^b 5^c` (`b <= 2`,
/// `c <= 1`) minimising `n^2` times 1.15 per factor 3 and 1.2 per factor 5. Real FFTs of odd
/// lengths are several times slower per point (libtorch 2.11 with MKL, one thread, per
/// point of `rfft2` + `irfft2`: 27x27 10.8 ns, 30x30 3.8, 32x32 2.8; 57: 12, 64: 3.3; 89: 19,
/// 96: 3.6), so a slightly longer even transform wins.
pub fn fft_size(min: i64) -> i64 {
    let min = min.max(1);
    let cost = |n: i64| -> Option<f64> {
        if n % 2 != 0 {
            return None;
        }
        let mut m = n;
        while m % 2 == 0 {
            m /= 2;
        }
        let mut w = 1.0;
        let (mut threes, mut fives) = (0, 0);
        while m % 3 == 0 {
            m /= 3;
            threes += 1;
            w *= 1.15;
        }
        while m % 5 == 0 {
            m /= 5;
            fives += 1;
            w *= 1.2;
        }
        (m == 1 && threes <= 2 && fives <= 1).then(|| (n * n) as f64 * w)
    };
    // A power of two at most doubles `min`, so the search is short.
    let limit = (min as u64).next_power_of_two().max(2) as i64;
    (min..=limit)
        .filter_map(|n| cost(n).map(|c| (n, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n)
        .expect("a power of two is a candidate")
}

/// Depthwise conv of `z` by a `[c, 1, kh, kw]` kernel, "same" padding, via FFT.
///
/// A circular cross-correlation of size `n` with the kernel's centre at index 0 (tap offset
/// `d` stored at `d mod n`) equals the zero-padded one on the `h` output rows as soon as
/// `n >= h + kh/2`: an output row `i < h` reads input rows `i + d` with `|d| <= kh/2`, and the
/// wrapped copies of those taps (`d ± n`) land outside `[0, h)`, where the input is zero. That
/// needs about half the area of the usual `h + kh - 1` (at least 27x27 instead of 40x40 on
/// ViT-B's 14x14 grid with the 27x27 cropped kernel; [`fft_size`] rounds up to a fast even
/// length), and the output needs no re-centring. Kernels larger
/// than `(2h-1) x (2w-1)` are cropped first (the dropped taps only ever see padding).
pub fn fft_depthwise(z: &Tensor, k: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (_, _, h, w) = z.size4().expect("map is 4-D");
    let spectrum = KernelSpectrum::new(k, h, w, z.kind());
    fft_depthwise_with(z, &spectrum, bias)
}

/// The FFT of a depthwise kernel fitted to an `h x w` map, in the layout [`fft_depthwise`]
/// multiplies with: computed once, it serves every application of the kernel to maps of that
/// size (DKA's "mona" placement applies one module twice per block; see `Kernels::spectrum`).
struct KernelSpectrum {
    /// `[c, nh, nw/2 + 1]`, complex.
    kf: Tensor,
    nh: i64,
    nw: i64,
}

impl KernelSpectrum {
    /// `k`: `[c, 1, kh, kw]`; `kind`: the map's type (f64 maps get an f64 spectrum).
    fn new(k: &Tensor, h: i64, w: i64, kind: Kind) -> Self {
        let s = k.size();
        let c = s[0];
        let k = fit_kernel(k, s[2].min(2 * h - 1), s[3].min(2 * w - 1));
        let s = k.size();
        let (kh, kw) = (s[2], s[3]);
        let (rh, rw) = (kh / 2, kw / 2);
        let (nh, nw) = (fft_size(h + rh), fft_size(w + rw));
        // Correlation with K is convolution with K flipped: the flipped tap at offset (dy, dx)
        // from the centre goes to (dy mod nh, dx mod nw), and the product needs no conjugate.
        let kf = k
            .to_kind(work_kind(kind))
            .reshape([c, kh, kw])
            .flip([-2i64, -1])
            .constant_pad_nd([0, nw - kw, 0, nh - kh])
            .roll([-rh, -rw], [-2i64, -1])
            .fft_rfft2(None::<&[i64]>, [-2i64, -1], "backward");
        Self { kf, nh, nw }
    }
}

/// Half precision has no FFT of arbitrary sizes: work in f32, or f64 for f64 input.
fn work_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// [`fft_depthwise`] with the kernel's spectrum already computed (for this map's size).
fn fft_depthwise_with(z: &Tensor, k: &KernelSpectrum, bias: Option<&Tensor>) -> Tensor {
    let (_, c, h, w) = z.size4().expect("map is 4-D");
    let (nh, nw) = (k.nh, k.nw);
    // One axis at a time: the rows are transformed before the zero rows are added, and the
    // inverse transforms only the `h` rows that are kept; NCHW-contiguous planes transform
    // faster than the strided views of token grids.
    let zf = z
        .to_kind(work_kind(z.kind()))
        .contiguous()
        .fft_rfft(nw, -1, "backward")
        .fft_fft(nh, -2, "backward");
    let y = (zf * &k.kf)
        .fft_ifft(None, -2, "backward")
        .narrow(2, 0, h)
        .fft_irfft(nw, -1, "backward");
    let y = y.narrow(3, 0, w).to_kind(z.kind());
    match bias {
        Some(b) => y + b.view([1, c, 1, 1]),
        None => y,
    }
}

/// A depthwise kernel for an `h x w` map in the form [`ConvPath::FftToeplitz`] multiplies
/// with. Correlation with `K` splits into rows: `y[i] = Σ_a K[a] ⋆ z[i + a]` along the width.
/// Along the width it is a circular FFT convolution as in [`fft_depthwise`] (length
/// `nw >= w + rw`, so the wrap-around only reads zero padding); per width frequency `f` the sum
/// over the rows is the `h x h` Toeplitz matrix `G[c, f][i, i'] = K̂[c, i' - i + h - 1, f]` of
/// the kernel's rows transformed along the width (the kernel fitted to `2h - 1` rows: every
/// offset a map of `h` rows has). Exact up to float round-off.
pub struct RowToeplitz {
    /// `G` transposed: `[c * (nw/2 + 1), h, h]`, complex.
    g: Tensor,
    nw: i64,
}

impl RowToeplitz {
    /// `k`: `[c, 1, kh, kw]`; `kind`: the map's type (f64 maps get f64 matrices).
    pub fn new(k: &Tensor, h: i64, w: i64, kind: Kind) -> Self {
        let s = k.size();
        let c = s[0];
        let k = fit_kernel(k, 2 * h - 1, s[3].min(2 * w - 1));
        let kw = k.size()[3];
        let rw = kw / 2;
        let nw = fft_size(w + rw);
        let nf = nw / 2 + 1;
        // The rows flipped along the width (correlation), tap offset dx at (-dx mod nw).
        let kf = k
            .to_kind(work_kind(kind))
            .reshape([c, 2 * h - 1, kw])
            .flip([-1i64])
            .constant_pad_nd([0, nw - kw])
            .roll([-rw], [-1i64])
            .fft_rfft(None::<i64>, -1, "backward");
        // Windows of h rows: u[c, f, s, t] = kf[c, s + t, f]; G[i, i'] = u[h - 1 - i, i'] (the
        // windows flipped). Kept transposed, as the right factor of the product in `apply`.
        // A strided view, not a gather: its backward is unfold's, not an index_add.
        let g = kf
            .permute([0, 2, 1])
            .unfold(2, h, 1)
            .flip([2i64])
            .transpose(2, 3)
            .reshape([c * nf, h, h]);
        Self { g, nw }
    }

    /// The convolution of `z` (`[b, c, h, w]`, the map this was made for), plus `bias`.
    pub fn apply(&self, z: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (b, c, h, w) = z.size4().expect("map is 4-D");
        let nw = self.nw;
        let nf = nw / 2 + 1;
        // Per channel and width frequency, the rows of every image times G^T: `[b, h] x [h, h]`.
        let zf = z
            .to_kind(work_kind(z.kind()))
            .contiguous()
            .fft_rfft(nw, -1, "backward") // [b, c, h, nf]
            .permute([1, 3, 0, 2])
            .reshape([c * nf, b, h]);
        let y = zf
            .bmm(&self.g)
            .view([c, nf, b, h])
            .fft_irfft(nw, 1, "backward") // [c, nw, b, h]
            .narrow(1, 0, w)
            .permute([2, 0, 3, 1])
            .to_kind(z.kind());
        match bias {
            Some(bs) => y + bs.view([1, c, 1, 1]),
            None => y,
        }
    }
}

/// What a spectrum is kept under in a block's memo: the module's address, the map's height
/// and width, grad mode, f64.
type SpectrumKey = (usize, i64, i64, bool, bool);

/// Depthwise conv with "same" padding in the tensor's own layout.
pub fn direct_depthwise(z: &Tensor, k: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let s = k.size();
    let c = z.size()[1];
    z.conv2d(k, bias, [1, 1], [s[2] / 2, s[3] / 2], [1, 1], c)
}

/// `x` with channels-last strides (what `memory_format=torch.channels_last` gives).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

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
        match path.choose(kh, kw, h, w) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_sizes_are_even_and_cheap() {
        let got: Vec<i64> = [1, 7, 13, 27, 39, 40, 57, 81, 89].map(fft_size).to_vec();
        assert_eq!(got, [2, 8, 16, 32, 40, 40, 64, 96, 96]);
        for n in 1..300 {
            let s = fft_size(n);
            assert!(s >= n && s % 2 == 0 && s <= 2 * n.max(1), "{n} -> {s}");
        }
    }

    #[test]
    fn the_circular_fft_equals_the_padded_direct_conv_on_thin_and_odd_maps() {
        tch::manual_seed(3);
        for (h, w, k) in [(1, 5, 51), (3, 2, 5), (5, 9, 7), (6, 6, 11), (13, 4, 3)] {
            let opts = (Kind::Double, tch::Device::Cpu);
            let z = Tensor::randn([2, 3, h, w], opts);
            let kern = Tensor::randn([3, 1, k, k], opts);
            let bias = Tensor::randn([3], opts);
            let want = direct_depthwise(&z, &kern, Some(&bias));
            let got = fft_depthwise(&z, &kern, Some(&bias));
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-10, "{h}x{w} kernel {k}: max error {err:e}");
        }
    }
}
