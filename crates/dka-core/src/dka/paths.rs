//! How one merged depthwise kernel is applied to a `[batch, channels, h, w]` map, "same"
//! padding, exactly (equal up to float round-off): direct, FFT, FFT along the width with a row
//! Toeplitz product along the height, or the map's full Toeplitz product. [`super::ConvPath`]
//! names them; [`super::Kernels`] merges and crops the kernels before.
use tch::{Kind, Tensor};

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
pub(super) struct KernelSpectrum {
    /// `[c, nh, nw/2 + 1]`, complex.
    kf: Tensor,
    nh: i64,
    nw: i64,
}

impl KernelSpectrum {
    /// `k`: `[c, 1, kh, kw]`; `kind`: the map's type (f64 maps get an f64 spectrum).
    pub(super) fn new(k: &Tensor, h: i64, w: i64, kind: Kind) -> Self {
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
pub(super) fn work_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// [`fft_depthwise`] with the kernel's spectrum already computed (for this map's size).
pub(super) fn fft_depthwise_with(z: &Tensor, k: &KernelSpectrum, bias: Option<&Tensor>) -> Tensor {
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

/// A depthwise kernel for an `h x w` map in the form [`super::ConvPath::FftToeplitz`] multiplies
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

/// Whether [`super::ConvPath::Toeplitz`]'s matrices for `c` channels of an `h x w` map stay small
/// (`c * (hw)^2` at most 2^25 values, 128 MiB in f32).
pub fn toeplitz_fits(c: i64, h: i64, w: i64) -> bool {
    c * (h * w).pow(2) <= 1 << 25
}

/// A depthwise kernel for an `h x w` map as the map's full Toeplitz matrix per channel:
/// `G[c][(i, j), (i', j')] = K[c, i' - i + h - 1, j' - j + w - 1]`, the kernel fitted to
/// `(2h - 1) x (2w - 1)` (every offset a map of `h x w` has), so `y[c] = G[c] z[c]` over the
/// flattened positions is the "same"-padded correlation. `G` is a strided view of the kernel
/// (two unfolds) copied once by the flip: its backward is unfold's, not a scatter. `G` is in
/// the map's type: a bf16 map (under autocast) multiplies with the kernel cast to bf16, as a
/// `conv2d` under autocast would.
pub struct Toeplitz2d {
    /// `G` transposed: `[c, hw, hw]`, the right factor of `[c, b, hw] x [c, hw, hw]`.
    gt: Tensor,
}

impl Toeplitz2d {
    /// `k`: `[c, 1, kh, kw]`; `kind`: the map's type.
    pub fn new(k: &Tensor, h: i64, w: i64, kind: Kind) -> Self {
        let c = k.size()[0];
        let k =
            fit_kernel(k, 2 * h - 1, 2 * w - 1)
                .to_kind(kind)
                .reshape([c, 2 * h - 1, 2 * w - 1]);
        // u[c, s, s', t, t'] = K[c, s + t, s' + t']; G^T[(i', j'), (i, j)] = u[i', j', h-1-i,
        // w-1-j]: the windows' own axes flipped.
        let gt = k
            .unfold(1, h, 1)
            .unfold(2, w, 1)
            .flip([3i64, 4])
            .reshape([c, h * w, h * w]);
        Self { gt }
    }

    /// The convolution of `z` (`[b, c, h, w]`, the map this was made for), plus `bias`.
    pub fn apply(&self, z: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (b, c, h, w) = z.size4().expect("map is 4-D");
        let y = z
            .reshape([b, c, h * w])
            .transpose(0, 1)
            .bmm(&self.gt)
            .transpose(0, 1)
            .view([b, c, h, w]);
        match bias {
            Some(bs) => y + bs.view([1, c, 1, 1]),
            None => y,
        }
    }
}

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
