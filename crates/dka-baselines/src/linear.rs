//! Linear probing: only the head trains on frozen features, which may be computed once and
//! cached ([`Method::frozen_features`]).
use dka_core::method::Method;
use dka_core::{Backbone, Result};
use serde::{Deserialize, Serialize};
use tch::nn;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearProbe {}

impl Method for LinearProbe {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn attach(&self, _backbone: &mut Backbone, _p: &nn::Path) -> Result<()> {
        Ok(())
    }

    fn frozen_features(&self) -> bool {
        true
    }
}
