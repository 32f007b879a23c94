//! The interface every fine-tuning method implements, DKA and the baselines alike.
use crate::backbone::Backbone;
use crate::error::Result;
use tch::nn;

/// A fine-tuning method: the modules it adds to a frozen backbone (in its own store, under
/// `p`) and which backbone tensors, if any, it trains.
pub trait Method: std::fmt::Debug {
    /// Short name used in tables and run folders.
    fn name(&self) -> &'static str;

    /// Builds the method's modules under `p` and puts them into the backbone's sites.
    fn attach(&self, backbone: &mut Backbone, p: &nn::Path) -> Result<()>;

    /// Whether the backbone tensor called `name` (timm's name) trains with this method.
    fn trains_backbone(&self, _name: &str) -> bool {
        false
    }

    /// Default learning rate of the backbone tensors this method trains (`None` when it
    /// trains none). The paper gives no rate for them; each method states its own choice.
    fn backbone_lr(&self) -> Option<f64> {
        None
    }

    /// The backbone's features never change during training (nothing attached, nothing of
    /// the backbone trains), so a trainer may compute them once and train the head on a cache.
    fn frozen_features(&self) -> bool {
        false
    }
}

pub use crate::sites::selected;
