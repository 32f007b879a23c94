//! Which differences between two methods are real: a paired comparison over draws.
//!
//! Two methods run on the same draws (same data subset, same seed) give pairs `(a_i, b_i)`
//! matched by draw index; [`paired`] summarises the differences `d_i = a_i − b_i`:
//! - the mean difference;
//! - the paired t-test (SciPy's `ttest_rel`): `t = mean(d) / (sd(d)/√n)`, `n − 1` degrees of
//!   freedom, two-sided p-value from Student's t distribution, and the 95 % confidence interval
//!   `mean(d) ± t_{0.975, n−1} · sd(d)/√n` (SciPy's `t.interval`);
//! - a percentile bootstrap 95 % interval of the mean difference: [`BOOTSTRAP_RESAMPLES`]
//!   resamples of the `n` pairs with replacement (seeded, so a table is reproducible), the
//!   2.5th and 97.5th percentiles of the resampled means with linear interpolation between
//!   order statistics (NumPy's default `percentile`).
//!
//! Edge cases, decided here rather than left to 0/0: with fewer than two pairs there is no
//! spread, so no interval and no p-value (`None`). With zero spread (every difference equal)
//! the t statistic is 0/0 or ±∞: identical pairs (difference 0) give p = 1, a constant
//! non-zero difference gives p = 0, and both intervals collapse to the difference itself.
//! Non-finite inputs are not filtered: they propagate (NaN) into every number.
//!
//! Student's t distribution is computed from the regularised incomplete beta function
//! (continued fraction, modified Lentz, as in Numerical Recipes' `betacf`) and a 15-digit
//! Lanczos log-gamma; the quantile by Newton's method on the tail. The unit test compares
//! p-values and intervals with SciPy (`python/make_stats_fixture.py` wrote
//! `tests/data/stats_fixture.json`).
//!
//! Pure Rust on purpose: no tensors here.

/// Resamples drawn by the percentile bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Paired comparison of two methods over the same draws (differences are `a − b`).
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `a_i − b_i` (NaN when `n` is 0).
    pub mean_diff: f64,
    /// Sample standard deviation of the differences (`n − 1` in the denominator); `None` for
    /// `n < 2`.
    pub sd_diff: Option<f64>,
    /// Paired t 95 % confidence interval of the mean difference; `None` for `n < 2`.
    pub t_ci95: Option<(f64, f64)>,
    /// Two-sided p-value of the paired t-test (H0: mean difference 0); `None` for `n < 2`.
    pub p_value: Option<f64>,
    /// Percentile bootstrap 95 % interval of the mean difference; `None` for `n < 2`.
    pub boot_ci95: Option<(f64, f64)>,
}

/// Pairs two methods' results by draw index: `(draw, value)` lists in, the values of the
/// draws present in both out (in draw order). Draws present in only one list are left out.
pub fn pair_by_draw(a: &[(u64, f64)], b: &[(u64, f64)]) -> (Vec<f64>, Vec<f64>) {
    let bmap: std::collections::BTreeMap<u64, f64> = b.iter().copied().collect();
    let mut pairs: Vec<(u64, f64, f64)> = a
        .iter()
        .filter_map(|&(d, x)| bmap.get(&d).map(|&y| (d, x, y)))
        .collect();
    pairs.sort_by_key(|p| p.0);
    pairs.dedup_by_key(|p| p.0);
    pairs.into_iter().map(|(_, x, y)| (x, y)).unzip()
}

/// Paired comparison of `a` and `b` (same length, pairs matched by position).
///
/// # Panics
/// If the slices differ in length.
pub fn paired(a: &[f64], b: &[f64], seed: u64) -> Paired {
    assert_eq!(
        a.len(),
        b.len(),
        "paired comparison needs as many values of a as of b"
    );
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    let mean_diff = mean(&d);
    if n < 2 {
        return Paired {
            n,
            mean_diff,
            sd_diff: None,
            t_ci95: None,
            p_value: None,
            boot_ci95: None,
        };
    }
    let df = (n - 1) as f64;
    let ss: f64 = d.iter().map(|x| (x - mean_diff).powi(2)).sum();
    let sd = (ss / df).sqrt();
    let se = sd / (n as f64).sqrt();
    let (t_ci95, p_value) = if sd == 0.0 {
        // Zero spread: 0/0 (identical pairs) or ±∞ (a constant non-zero difference).
        let p = if mean_diff == 0.0 { 1.0 } else { 0.0 };
        (Some((mean_diff, mean_diff)), Some(p))
    } else {
        let q = t_quantile_upper(0.025, df);
        let t = mean_diff / se;
        (
            Some((mean_diff - q * se, mean_diff + q * se)),
            Some(t_two_sided_p(t, df)),
        )
    };
    Paired {
        n,
        mean_diff,
        sd_diff: Some(sd),
        t_ci95,
        p_value,
        boot_ci95: Some(bootstrap_ci(&d, BOOTSTRAP_RESAMPLES, 0.95, seed)),
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Percentile bootstrap interval (level `level`) of the mean of `d`, from `resamples`
/// resamples of `d` with replacement.
pub fn bootstrap_ci(d: &[f64], resamples: usize, level: f64, seed: u64) -> (f64, f64) {
    let n = d.len();
    let mut rng = SplitMix64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| d[rng.below(n as u64) as usize]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    (percentile(&means, alpha), percentile(&means, 1.0 - alpha))
}

/// Quantile `q ∈ [0, 1]` of sorted values, linear interpolation between order statistics
/// (NumPy's default method).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    if frac == 0.0 {
        sorted[lo]
    } else {
        sorted[lo] + frac * (sorted[hi] - sorted[lo])
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, seedable, good enough to pick indices.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (rejection sampling, no modulo bias).
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Two-sided p-value `P(|T| ≥ |t|)` of Student's t with `df` degrees of freedom:
/// `I_x(df/2, 1/2)` with `x = df / (df + t²)`.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let t2 = t * t;
    // x and 1 − x computed separately: 1 − x is small for small t and must not lose digits.
    let x = df / (df + t2);
    let one_minus_x = t2 / (df + t2);
    beta_reg(df / 2.0, 0.5, x, one_minus_x)
}

/// Upper-tail quantile of Student's t: the `q > 0` with `P(T > q) = alpha` (`alpha < 1/2`).
pub fn t_quantile_upper(alpha: f64, df: f64) -> f64 {
    assert!(
        alpha > 0.0 && alpha < 0.5 && df > 0.0,
        "t quantile needs 0 < alpha < 1/2 and df > 0"
    );
    // Newton on g(q) = P(T > q) − alpha from q = 0: g is convex and decreasing for q > 0,
    // so the iterates increase monotonically to the root and never overshoot.
    let mut q = 0.0f64;
    for _ in 0..500 {
        let g = 0.5 * t_two_sided_p(q, df) - alpha;
        let step = g / t_pdf(q, df);
        q += step;
        if step.abs() <= 1e-15 * q.abs() {
            break;
        }
    }
    q
}

/// Density of Student's t with `df` degrees of freedom.
pub fn t_pdf(t: f64, df: f64) -> f64 {
    let ln_c =
        ln_gamma((df + 1.0) / 2.0) - ln_gamma(df / 2.0) - 0.5 * (df * std::f64::consts::PI).ln();
    (ln_c - (df + 1.0) / 2.0 * (t * t / df).ln_1p()).exp()
}

/// `ln Γ(x)` for `x > 0`: Lanczos approximation (g = 7, 9 coefficients; relative error of
/// Γ about 1e-15), reflection below 1/2.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Γ(x) Γ(1 − x) = π / sin(πx)
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// Regularised incomplete beta `I_x(a, b)`; the caller passes `1 − x` as well, computed
/// without cancellation where it can be.
pub fn beta_reg(a: f64, b: f64, x: f64, one_minus_x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if one_minus_x <= 0.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * one_minus_x.ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x < (a + 1)/(a + b + 2); otherwise use the
    // symmetry I_x(a, b) = 1 − I_{1−x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, one_minus_x) / b
    }
}

/// Continued fraction of the incomplete beta function (modified Lentz's method).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const EPS: f64 = 1e-16;
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= EPS {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative difference, with `scale` as the floor of the denominator.
    fn rel(a: f64, b: f64, scale: f64) -> f64 {
        (a - b).abs() / b.abs().max(scale)
    }

    #[test]
    fn p_values_and_intervals_match_scipy() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/stats_fixture.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let (a, b) = (floats(&c["a"]), floats(&c["b"]));
            let r = paired(&a, &b, 7);
            let df = (a.len() - 1) as f64;
            let sp = c["p_value"].as_f64().unwrap();
            let p = r.p_value.unwrap();
            // p-values: 1e-9 relative, down to the smallest (2.5e-16). Measured: 5e-13 at worst,
            // quantiles 2e-14, interval ends 1.3e-13 of the half-width (SciPy 1.17.1).
            assert!(rel(p, sp, 0.0) <= 1e-9, "{name}: p {p:e} vs SciPy {sp:e}");
            let sq = c["t_quantile"].as_f64().unwrap();
            let q = t_quantile_upper(0.025, df);
            assert!(rel(q, sq, 0.0) <= 1e-12, "{name}: quantile {q} vs {sq}");
            // Interval ends: 1e-9 relative to the half-width (an end may sit near zero).
            let (lo, hi) = r.t_ci95.unwrap();
            let ci = floats(&c["t_ci95"]);
            let half = (ci[1] - ci[0]) / 2.0;
            assert!(
                rel(lo, ci[0], half) <= 1e-9 && rel(hi, ci[1], half) <= 1e-9,
                "{name}: t interval ({lo}, {hi}) vs SciPy {ci:?}"
            );
            let sm = c["mean_diff"].as_f64().unwrap();
            assert!(rel(r.mean_diff, sm, half) <= 1e-12, "{name}: mean diff");
        }
    }

    #[test]
    fn t_distribution_closed_forms() {
        // df = 1 is Cauchy: P(|T| > t) = 1 − 2 atan(t)/π, quantile tan(π (1/2 − α)).
        for t in [0.1f64, 1.0, 3.0, 12.706, 100.0] {
            let exact = 1.0 - 2.0 * t.atan() / std::f64::consts::PI;
            assert!(rel(t_two_sided_p(t, 1.0), exact, 0.0) <= 1e-12, "t {t}");
        }
        let exact = (std::f64::consts::PI * (0.5 - 0.025)).tan();
        assert!(rel(t_quantile_upper(0.025, 1.0), exact, 0.0) <= 1e-12);
        // df = 2: P(|T| > t) = 1 − t / sqrt(2 + t²).
        for t in [0.01f64, 0.5, 4.303, 50.0] {
            let exact = 1.0 - t / (2.0 + t * t).sqrt();
            assert!(rel(t_two_sided_p(t, 2.0), exact, 0.0) <= 1e-12, "t {t}");
        }
        assert_eq!(t_two_sided_p(0.0, 4.0), 1.0);
        // ln Γ at integers and half-integers.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(10.5) - 1_133_278.388_948_785_4_f64.ln()).abs() < 1e-13);
    }

    #[test]
    fn edge_cases_are_explicit() {
        let none = paired(&[0.8], &[0.7], 1);
        assert_eq!(none.n, 1);
        assert!((none.mean_diff - 0.1).abs() < 1e-15);
        assert!(none.t_ci95.is_none() && none.p_value.is_none() && none.boot_ci95.is_none());
        let empty = paired(&[], &[], 1);
        assert_eq!(empty.n, 0);
        assert!(empty.mean_diff.is_nan() && empty.p_value.is_none());

        let same = paired(&[0.5, 0.6, 0.7], &[0.5, 0.6, 0.7], 1);
        assert_eq!(same.mean_diff, 0.0);
        assert_eq!(same.p_value, Some(1.0));
        assert_eq!(same.t_ci95, Some((0.0, 0.0)));
        assert_eq!(same.boot_ci95, Some((0.0, 0.0)));

        // Constant non-zero difference (exactly representable: 0.25).
        let shift = paired(&[1.25, 2.25, 3.25, 4.25], &[1.0, 2.0, 3.0, 4.0], 1);
        assert_eq!(shift.mean_diff, 0.25);
        assert_eq!(shift.sd_diff, Some(0.0));
        assert_eq!(shift.p_value, Some(0.0));
        assert_eq!(shift.t_ci95, Some((0.25, 0.25)));
        assert_eq!(shift.boot_ci95, Some((0.25, 0.25)));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let a = [0.71, 0.74, 0.69, 0.78, 0.73];
        let b = [0.66, 0.70, 0.70, 0.71, 0.69];
        let r1 = paired(&a, &b, 42);
        let r2 = paired(&a, &b, 42);
        let r3 = paired(&a, &b, 43);
        assert_eq!(r1, r2, "same seed, same interval");
        assert_eq!(r1.t_ci95, r3.t_ci95);
        // Five pairs have few distinct resample means, so two seeds may well give the same
        // percentiles; thirty spread-out values do not.
        let many: Vec<f64> = (0..30).map(|i| (i as f64 * 0.7919).sin()).collect();
        assert_ne!(
            bootstrap_ci(&many, 1000, 0.95, 1),
            bootstrap_ci(&many, 1000, 0.95, 2),
            "another seed, other resamples"
        );
        let (lo, hi) = r1.boot_ci95.unwrap();
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let (min, max) = d
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(min <= lo && lo < r1.mean_diff && r1.mean_diff < hi && hi <= max);
        // The bootstrap interval of a mean is narrower than the t interval at n = 5 (it
        // ignores the t distribution's heavier tails and uses the biased 1/n variance).
        let (tlo, thi) = r1.t_ci95.unwrap();
        assert!(hi - lo < thi - tlo);
    }

    #[test]
    fn pairs_are_matched_by_draw() {
        let a = [(2, 0.5), (0, 0.1), (1, 0.3), (4, 0.9)];
        let b = [(1, 0.2), (0, 0.0), (2, 0.4), (3, 0.7)];
        let (x, y) = pair_by_draw(&a, &b);
        assert_eq!(x, vec![0.1, 0.3, 0.5]);
        assert_eq!(y, vec![0.0, 0.2, 0.4]);
    }

    #[test]
    #[should_panic(expected = "as many values")]
    fn unequal_lengths_are_refused() {
        paired(&[1.0, 2.0], &[1.0], 0);
    }
}
