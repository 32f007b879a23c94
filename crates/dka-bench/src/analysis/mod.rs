//! What is done with a backbone or a trained run besides training it: its features on a
//! batch ([`features`]), the parameter counts of every method ([`params`]), the effective
//! receptive field of a method as it leaves a backbone ([`erf`], Figures 2 and 6), and the
//! trained run in PyTorch's formats ([`export`]).
pub mod erf;
pub mod export;
pub mod features;
pub mod inspect;
pub mod params;
pub mod predict;

use anyhow::Context;
use std::collections::BTreeMap;

/// `--where AXIS=VALUE` (repeatable) of the commands that read a grid's runs: a run matches
/// when every axis named has one of the values given for it (an axis named twice matches
/// either value).
#[derive(Debug, Clone, Default)]
pub struct AxisFilter(BTreeMap<String, Vec<String>>);

impl AxisFilter {
    pub fn parse(items: &[String]) -> anyhow::Result<Self> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for w in items {
            let (k, v) = w
                .split_once('=')
                .with_context(|| format!("--where {w}: expected AXIS=VALUE"))?;
            m.entry(k.trim().to_string())
                .or_default()
                .push(v.to_string());
        }
        Ok(Self(m))
    }

    pub fn matches(&self, axes: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(k, vs)| axes.get(k).is_some_and(|a| vs.iter().any(|v| v == a)))
    }
}
