//! Frozen Linear weights in the autocast type, cast once per training run instead of at every
//! use.
//!
//! Autocast keeps the casts of weights that train for the length of one autocast region, but
//! casts a weight that does not train at every call: in a frozen backbone that is every Linear
//! weight of every block, at every step (DINOv2-S: 48 casts per step, ~6 % of a demo step on a
//! 2-core CPU). Inside [`FrozenCasts::keep`]'s scope, while autocast to the same type is on
//! ([`AutocastMark::enter`]), [`frozen`] hands out each frozen fp32 tensor's cast, made on first
//! use and kept until the scope ends. The values are the ones autocast would make (the same
//! rounding of the same tensor), so the results are bit for bit the same; the copies take half
//! the frozen weights' memory again.
//!
//! The contract: a tensor that does not require grad does not change inside the scope (the
//! trainer opens it after the weights are loaded; frozen weights stay as they are while it
//! trains). Each cast keeps its source alive, so an address is never reused inside the scope.
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Kind, Tensor};

struct Cache {
    kind: Kind,
    /// By address, shape and strides (a view that starts where its base does is another key).
    casts: HashMap<(usize, Vec<i64>, Vec<i64>), (Tensor, Tensor)>,
}

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
    static AUTOCAST: RefCell<Option<Kind>> = const { RefCell::new(None) };
}

/// While alive, frozen tensors' casts to `kind` are kept (see the module documentation).
#[must_use = "the casts are kept only while the guard lives"]
pub struct FrozenCasts {
    previous: Option<Cache>,
}

impl FrozenCasts {
    /// Opens the scope for casts to `kind` (a reduced type: bf16 or fp16).
    pub fn keep(kind: Kind) -> Self {
        let previous = CACHE.with(|c| {
            c.borrow_mut().replace(Cache {
                kind,
                casts: HashMap::new(),
            })
        });
        Self { previous }
    }

    /// How many casts the scope holds.
    pub fn len(&self) -> usize {
        CACHE.with(|c| c.borrow().as_ref().map_or(0, |c| c.casts.len()))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for FrozenCasts {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CACHE.with(|c| *c.borrow_mut() = previous);
    }
}

/// Says that the code inside runs under autocast to `kind` (the trainer's autocast wrapper
/// enters it); outside, [`frozen`] hands out nothing, so no fp32 forward sees a reduced weight.
#[must_use = "the mark holds only while the guard lives"]
pub struct AutocastMark {
    previous: Option<Kind>,
}

impl AutocastMark {
    pub fn enter(kind: Kind) -> Self {
        let previous = AUTOCAST.with(|a| a.borrow_mut().replace(kind));
        Self { previous }
    }
}

impl Drop for AutocastMark {
    fn drop(&mut self) {
        let previous = self.previous.take();
        AUTOCAST.with(|a| *a.borrow_mut() = previous);
    }
}

/// The type the trainer's autocast marks as on ([`AutocastMark::enter`]), if any.
pub fn autocast_kind() -> Option<Kind> {
    AUTOCAST.with(|a| *a.borrow())
}

/// Whether an operation on `x` runs in bf16: `x` is bf16, or autocast to bf16 is marked on.
pub fn runs_in_bf16(x: &Tensor) -> bool {
    x.kind() == Kind::BFloat16 || autocast_kind() == Some(Kind::BFloat16)
}

/// The kept cast of `t` when `t` is a frozen fp32 tensor, a scope is open and autocast to the
/// scope's type is on; `None` otherwise (use `t` as it is: autocast casts it).
pub fn frozen(t: &Tensor) -> Option<Tensor> {
    if t.requires_grad() || t.kind() != Kind::Float {
        return None;
    }
    let on = AUTOCAST.with(|a| *a.borrow());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let cache = c.as_mut()?;
        if on != Some(cache.kind) {
            return None;
        }
        let kind = cache.kind;
        let (_, cast) = cache
            .casts
            .entry((t.data_ptr() as usize, t.size(), t.stride()))
            .or_insert_with(|| (t.shallow_clone(), t.to_kind(kind)));
        Some(cast.shallow_clone())
    })
}

/// `x W^T + b` with the frozen weight and bias taken from the scope's casts where there are
/// any: what `layer.forward(x)` computes under autocast.
pub fn linear(layer: &tch::nn::Linear, x: &Tensor) -> Tensor {
    use tch::nn::Module;
    match frozen(&layer.ws) {
        Some(w) => {
            let b = layer
                .bs
                .as_ref()
                .map(|b| frozen(b).unwrap_or_else(|| b.shallow_clone()));
            x.linear(&w, b.as_ref())
        }
        None => layer.forward(x),
    }
}

/// `layer`'s weight and bias convolved with `x` at the given geometry (tch keeps a conv's own
/// private, so the caller states it; a strided conv may be computed at stride 1), the frozen
/// ones taken from the scope's casts where there are any: under autocast, what `conv2d` with
/// the layer's tensors computes.
pub fn conv2d(
    layer: &tch::nn::Conv2D,
    x: &Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
) -> Tensor {
    let kept = |t: &Tensor| frozen(t).unwrap_or_else(|| t.shallow_clone());
    let b = layer.bs.as_ref().map(kept);
    x.conv2d(
        &kept(&layer.ws),
        b.as_ref(),
        [stride; 2],
        [padding; 2],
        [1, 1],
        groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn casts_are_handed_out_only_for_frozen_tensors_inside_a_scope_under_autocast() {
        let frozen_w = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let trained = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(frozen(&frozen_w).is_none(), "no scope");
        let scope = FrozenCasts::keep(Kind::BFloat16);
        assert!(
            frozen(&frozen_w).is_none(),
            "a scope, but autocast is not marked on"
        );
        {
            let _on = AutocastMark::enter(Kind::Half);
            assert!(frozen(&frozen_w).is_none(), "autocast to another type");
        }
        {
            let _on = AutocastMark::enter(Kind::BFloat16);
            let a = frozen(&frozen_w).expect("a frozen fp32 tensor under the scope's autocast");
            assert_eq!(a.kind(), Kind::BFloat16);
            assert!(
                a.equal(&frozen_w.to_kind(Kind::BFloat16)),
                "the value autocast would make"
            );
            let b = frozen(&frozen_w).unwrap();
            assert_eq!(a.data_ptr(), b.data_ptr(), "made once, then kept");
            assert!(
                frozen(&trained).is_none(),
                "a tensor that trains is autocast's to cast"
            );
            let view = frozen_w.narrow(0, 0, 2);
            assert_eq!(view.data_ptr(), frozen_w.data_ptr());
            let cast = frozen(&view).expect("a frozen view");
            assert_eq!(
                cast.size(),
                [2, 3],
                "a view at its base's address: its own cast"
            );
            assert_eq!(scope.len(), 2);
        }
        assert!(frozen(&frozen_w).is_none(), "autocast mark gone");
        drop(scope);
        let _on = AutocastMark::enter(Kind::BFloat16);
        assert!(frozen(&frozen_w).is_none(), "scope gone");
    }
}
