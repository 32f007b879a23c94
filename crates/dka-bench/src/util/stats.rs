//! Summary statistics of plain numbers, one definition each for the whole runner: the median
//! (NumPy's: the mean of the middle pair for an even count), the mean and the sample standard
//! deviation (n − 1; 0 for a single value).

/// The median (NumPy's definition); `None` for no values. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The mean; NaN for no values.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The sample standard deviation (n − 1 in the denominator); 0 for fewer than two values.
pub fn sample_std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m).powi(2)).sum();
    (ss / (values.len() - 1) as f64).sqrt()
}

/// [`mean`] and [`sample_std`].
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    (mean(values), sample_std(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_numpys() {
        // numpy.median([3, 1, 2]) == 2.0; numpy.median([4, 1, 3, 2]) == 2.5
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn sample_std_uses_n_minus_one() {
        // numpy.std([2, 4, 4, 4, 5, 5, 7, 9], ddof=1) == 2.138089935299395
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!((sample_std(&v) - 2.138_089_935_299_395).abs() < 1e-12);
        assert_eq!(mean(&v), 5.0);
        assert_eq!(sample_std(&[3.0]), 0.0);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
    }
}
