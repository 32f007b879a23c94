//! [`ConvPath::Tuned`]: the fastest exact path for each shape, measured on this machine and
//! device. Which path wins depends on both: on the 2-core AMD EPYC the FFT path beat the
//! FFT-Toeplitz one on ViT-B's 14x14 grid where the 2-core Xeon measured the opposite
//! (`dka bench conv`), and a GPU has other costs again. [`ConvPath::Auto`] is a fixed rule
//! from CPU measurements; `Tuned` measures instead.
//!
//! At the first map of a shape (device, type, batch, channels, height, width, cropped kernel)
//! the candidates run forward and backward on made-up data (no draw from the random generator,
//! so a tuned run's random stream is an untuned run's), one warm-up each and then interleaved
//! rounds, and the one with the smallest median is kept for the process. All candidates are
//! exact, so the choice changes results only at float round-off; two processes may choose
//! differently when two paths are close, which is why `Auto` stays the default. The choice and
//! the times are logged, and [`tuned_choices`] lists them.
use super::paths::{
    channels_last, direct_depthwise, fft_depthwise, toeplitz_fits, RowToeplitz, Toeplitz2d,
};
use super::ConvPath;
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One candidate's median forward + backward time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathTime {
    pub path: ConvPath,
    pub ms: f64,
}

/// Device, map type, `[batch, channels, h, w, kh, kw]`: compared on every application of a
/// tuned module, so no strings.
type Key = (Device, Kind, [i64; 6]);

/// The process's choices; a handful of shapes per model, so a list.
static CHOICES: Mutex<Vec<(Key, ConvPath)>> = Mutex::new(Vec::new());

fn choices() -> std::sync::MutexGuard<'static, Vec<(Key, ConvPath)>> {
    CHOICES.lock().unwrap_or_else(|e| e.into_inner())
}

fn lookup(list: &[(Key, ConvPath)], key: &Key) -> Option<ConvPath> {
    list.iter().find(|(k, _)| k == key).map(|(_, p)| *p)
}

/// Timed rounds per candidate after its warm-up.
const ROUNDS: usize = 5;

/// The path [`ConvPath::Tuned`] takes for the map `z` and a merged kernel cropped to
/// `kh x kw`: measured at the first such map in this process, then kept.
pub(super) fn choose(z: &Tensor, kh: i64, kw: i64) -> ConvPath {
    let (b, c, h, w) = z.size4().expect("map is 4-D");
    let key = (z.device(), z.kind(), [b, c, h, w, kh, kw]);
    if let Some(p) = lookup(&choices(), &key) {
        return p;
    }
    let times = measure_paths([b, c, h, w], kh, kw, z.kind(), z.device(), ROUNDS);
    let best = times
        .iter()
        .min_by(|a, b| a.ms.total_cmp(&b.ms))
        .expect("at least one candidate")
        .path;
    let said: Vec<String> = times
        .iter()
        .map(|t| format!("{:?} {:.2} ms", t.path, t.ms))
        .collect();
    tracing::info!(
        "DKA conv path for a {:?} map [{b}, {c}, {h}, {w}] on {:?}, kernel {kh}x{kw}: {}; using {best:?}",
        z.kind(),
        z.device(),
        said.join(", ")
    );
    // Another thread may have measured the same shape meanwhile: every caller uses the first.
    let mut list = choices();
    lookup(&list, &key).unwrap_or_else(|| {
        list.push((key, best));
        best
    })
}

/// The choices [`ConvPath::Tuned`] made in this process: `(device, type, [b, c, h, w, kh, kw],
/// path)`.
pub fn tuned_choices() -> Vec<(String, String, [i64; 6], ConvPath)> {
    choices()
        .iter()
        .map(|((d, k, s), p)| (format!("{d:?}"), format!("{k:?}"), *s, *p))
        .collect()
}

/// Median forward + backward time of each exact path for a `[b, c, h, w]` map of `kind` on
/// `device` and one `[c, 1, kh, kw]` fp32 kernel (the merged, cropped kernel; its preparation
/// counts, as in a block that applies the module once), under the caller's autocast state.
/// Candidates: direct, FFT, FFT-Toeplitz, and the full Toeplitz product where its matrices fit
/// ([`toeplitz_fits`]); not direct for a kernel of 15x15 or more on a map of 1024 positions or
/// more (5 to 40x slower than FFT in every measurement, seconds per pass). A candidate whose
/// warm-up takes over 4x the fastest warm-up is dropped from the rounds (its warm-up time is
/// reported).
pub fn measure_paths(
    [b, c, h, w]: [i64; 4],
    kh: i64,
    kw: i64,
    kind: Kind,
    device: Device,
    rounds: usize,
) -> Vec<PathTime> {
    tch::with_grad(|| {
        // Made-up data from a formula: the random generator is not touched.
        let wave = |n: i64, f: f64| (Tensor::arange(n, (Kind::Float, device)) * f).sin();
        let z = wave(b * c * h * w, 0.7919)
            .view([b, c, h, w])
            .to_kind(kind)
            .set_requires_grad(true);
        let k = (wave(c * kh * kw, 0.3137) * 0.05)
            .view([c, 1, kh, kw])
            .set_requires_grad(true);
        let mut candidates = vec![ConvPath::Fft, ConvPath::FftToeplitz];
        if !(kh * kw >= 225 && h * w >= 1024) {
            candidates.insert(0, ConvPath::Direct);
        }
        if toeplitz_fits(c, h, w) {
            candidates.push(ConvPath::Toeplitz);
        }
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        let pass = |path: ConvPath| -> f64 {
            sync();
            let t = Instant::now();
            let y = match path {
                ConvPath::Direct => direct_depthwise(&channels_last(&z), &k, None),
                ConvPath::Fft => fft_depthwise(&z, &k, None),
                ConvPath::FftToeplitz => RowToeplitz::new(&k, h, w, kind).apply(&z, None),
                ConvPath::Toeplitz => Toeplitz2d::new(&k, h, w, kind).apply(&z, None),
                p => unreachable!("{p:?} is not a candidate"),
            };
            y.to_kind(Kind::Float).square().sum(Kind::Float).backward();
            sync();
            t.elapsed().as_secs_f64() * 1e3
        };
        let warm: Vec<f64> = candidates.iter().map(|&p| pass(p)).collect();
        let fastest = warm.iter().copied().fold(f64::INFINITY, f64::min);
        let (timed, dropped): (Vec<(ConvPath, f64)>, Vec<_>) = candidates
            .into_iter()
            .zip(warm)
            .partition(|&(_, t)| t <= 4.0 * fastest);
        let mut samples = vec![Vec::with_capacity(rounds); timed.len()];
        for _ in 0..rounds {
            for (s, &(p, _)) in samples.iter_mut().zip(&timed) {
                s.push(pass(p));
            }
        }
        timed
            .iter()
            .zip(samples)
            .map(|(&(path, warm), mut s)| {
                s.sort_by(f64::total_cmp);
                let ms = s.get(s.len() / 2).copied().unwrap_or(warm);
                PathTime { path, ms }
            })
            .chain(dropped.into_iter().map(|(path, ms)| PathTime { path, ms }))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_kernels_on_large_maps_skip_direct_and_huge_toeplitz_matrices() {
        let times = measure_paths([1, 64, 32, 32], 51, 51, Kind::Float, Device::Cpu, 1);
        let paths: Vec<ConvPath> = times.iter().map(|t| t.path).collect();
        assert!(!paths.contains(&ConvPath::Direct), "{paths:?}");
        assert!(!paths.contains(&ConvPath::Toeplitz), "{paths:?}");
        assert!(paths.contains(&ConvPath::Fft), "{paths:?}");
    }
}
