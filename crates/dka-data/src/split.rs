//! Reproducible low-data splits.
//!
//! Units of a split are groups (`Record::group`: an image, a lesion, a BraTS case), so a
//! group never straddles two splits; counts below are in groups.
//!
//! - **test**: the release's official test split when it has one (ISIC-2018 Test, Kaggle
//!   COVID test, a `test/` folder); otherwise, per stratum, `round(n * test_fraction)` groups
//!   (at least one when the stratum has two or more) drawn with the split seed only. The test
//!   split never depends on the draw or the training fraction.
//! - **val**: the release's official validation split when it has one; otherwise, per stratum,
//!   `round(n * val_fraction)` of the remaining groups, drawn with the split seed only.
//! - **train**: per stratum of the remaining pool of `n_c` groups, the first
//!   `max(1, floor(n_c * r))` of a permutation seeded by (seed, draw, stratum). Fractions are
//!   nested: for one draw, a smaller `r` picks a subset of a larger one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::rng::Rng;
use crate::sample::SplitName;

const TAG_TEST: u64 = 0x7E57;
const TAG_VAL: u64 = 0x0FA1;
const TAG_TRAIN: u64 = 0x7EA1;

/// The paper's low-data fractions: 0.63 %, 1.25 % and 100 %.
pub const PAPER_FRACTIONS: [f64; 3] = [0.0063, 0.0125, 1.0];

/// How to split a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitSpec {
    /// Fraction of each stratum held out for test (ignored when the release has a test split).
    pub test_fraction: f64,
    /// Fraction of each stratum's remaining pool held out for validation (0: none).
    pub val_fraction: f64,
    /// Training fraction `r` per stratum, in (0, 1].
    pub train_fraction: f64,
    /// Which seeded draw ("fold") of the training subset, 0-based.
    pub draw: u32,
    /// The split seed: fixes the test/val split and, with `draw`, the training subset.
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            test_fraction: 0.2,
            val_fraction: 0.0,
            train_fraction: 1.0,
            draw: 0,
            seed: 0,
        }
    }
}

impl SplitSpec {
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| (0.0..1.0).contains(&v);
        if !ok(self.test_fraction)
            || !ok(self.val_fraction)
            || self.test_fraction + self.val_fraction >= 1.0
        {
            return Err(DataError::config(format!(
                "test_fraction {} and val_fraction {} must be in [0, 1) and sum below 1",
                self.test_fraction, self.val_fraction
            )));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return Err(DataError::config(format!(
                "train_fraction {} must be in (0, 1]",
                self.train_fraction
            )));
        }
        Ok(())
    }
}

/// Parses a fraction written `0.0125`, `1.25%` or `100%`.
pub fn parse_fraction(s: &str) -> Result<f64> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| {
        DataError::config(format!("`{s}` is not a fraction (e.g. 0.0125 or 1.25%)"))
    })?;
    let v = v * scale;
    if !(v > 0.0 && v <= 1.0) {
        return Err(DataError::config(format!(
            "fraction `{s}` must be in (0, 1]"
        )));
    }
    Ok(v)
}

/// `max(1, floor(n * r))`, capped at `n` (0 for an empty stratum).
pub fn train_count(n: usize, r: f64) -> usize {
    if n == 0 {
        return 0;
    }
    (((n as f64) * r + 1e-9).floor() as usize).clamp(1, n)
}

/// Held-out count for a stratum of `n` groups: `round(n * f)`, at least 1 when `f > 0` and
/// `n >= 2`, leaving at least one group.
fn holdout_count(n: usize, f: f64) -> usize {
    if f <= 0.0 || n < 2 {
        return 0;
    }
    (((n as f64) * f).round() as usize).clamp(1, n - 1)
}

/// Record indices per split, each sorted ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

impl Split {
    pub fn get(&self, name: SplitName) -> &[usize] {
        match name {
            SplitName::Train => &self.train,
            SplitName::Val => &self.val,
            SplitName::Test => &self.test,
        }
    }

    pub(crate) fn get_mut(&mut self, name: SplitName) -> &mut Vec<usize> {
        match name {
            SplitName::Train => &mut self.train,
            SplitName::Val => &mut self.val,
            SplitName::Test => &mut self.test,
        }
    }
}

struct Group {
    stratum: usize,
    official: Option<SplitName>,
    records: Vec<usize>,
}

/// Draws per stratum: `count(n)` groups of `pool` (group indices) go to `out`, the rest stay.
fn take_per_stratum(
    groups: &[Group],
    pool: &mut Vec<usize>,
    tag: &[u64],
    count: impl Fn(usize) -> usize,
    out: &mut Vec<usize>,
) {
    let mut by_stratum: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &g in pool.iter() {
        by_stratum.entry(groups[g].stratum).or_default().push(g);
    }
    let mut rest = Vec::new();
    for (s, mut members) in by_stratum {
        let mut parts = tag.to_vec();
        parts.push(s as u64);
        Rng::from_parts(&parts).shuffle(&mut members);
        let k = count(members.len());
        out.extend_from_slice(&members[..k]);
        rest.extend_from_slice(&members[k..]);
    }
    rest.sort_unstable();
    *pool = rest;
}

/// Splits a dataset as described in the module documentation.
pub fn make_split(ds: &dyn Dataset, spec: &SplitSpec) -> Result<Split> {
    spec.validate()?;
    let mut by_name: BTreeMap<&str, Group> = BTreeMap::new();
    for (i, r) in ds.records().iter().enumerate() {
        by_name
            .entry(r.group.as_str())
            .or_insert(Group {
                stratum: r.stratum,
                official: r.official,
                records: Vec::new(),
            })
            .records
            .push(i);
    }
    let groups: Vec<Group> = by_name.into_values().collect();
    let official = |s: SplitName| groups.iter().any(|g| g.official == Some(s));
    let (has_test, has_val) = (official(SplitName::Test), official(SplitName::Val));

    let mut pool: Vec<usize> = Vec::new();
    let (mut test, mut val, mut train) = (Vec::new(), Vec::new(), Vec::new());
    for (gi, g) in groups.iter().enumerate() {
        match g.official {
            Some(SplitName::Test) => test.push(gi),
            Some(SplitName::Val) => val.push(gi),
            _ => pool.push(gi),
        }
    }
    if !has_test {
        take_per_stratum(
            &groups,
            &mut pool,
            &[spec.seed, TAG_TEST],
            |n| holdout_count(n, spec.test_fraction),
            &mut test,
        );
    }
    if !has_val {
        take_per_stratum(
            &groups,
            &mut pool,
            &[spec.seed, TAG_VAL],
            |n| holdout_count(n, spec.val_fraction),
            &mut val,
        );
    }
    take_per_stratum(
        &groups,
        &mut pool,
        &[spec.seed, TAG_TRAIN, spec.draw as u64],
        |n| train_count(n, spec.train_fraction),
        &mut train,
    );
    let mut split = Split::default();
    for (name, gs) in [
        (SplitName::Train, train),
        (SplitName::Val, val),
        (SplitName::Test, test),
    ] {
        let v = split.get_mut(name);
        for g in gs {
            v.extend_from_slice(&groups[g].records);
        }
        v.sort_unstable();
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_counts_follow_the_formula() {
        assert_eq!(train_count(437, 0.0063), 2);
        assert_eq!(train_count(133, 0.0063), 1);
        assert_eq!(train_count(80, 0.0125), 1);
        assert_eq!(train_count(800, 0.0125), 10);
        assert_eq!(train_count(5, 1.0), 5);
        assert_eq!(train_count(0, 0.5), 0);
    }

    #[test]
    fn fractions_parse_with_or_without_percent() {
        assert_eq!(parse_fraction("1.25%").unwrap(), 0.0125);
        assert_eq!(parse_fraction("0.0063").unwrap(), 0.0063);
        assert_eq!(parse_fraction("100%").unwrap(), 1.0);
        assert!(parse_fraction("0").is_err());
        assert!(parse_fraction("abc").is_err());
    }
}
