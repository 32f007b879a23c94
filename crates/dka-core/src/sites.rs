//! Named insertion sites that adapters fill.
//!
//! A backbone block never knows which method adapts it: it calls whatever module sits in each
//! of its sites, and with every site empty it computes exactly the reference (timm) block.
//! A method builds its modules (their tensors live in the method's own `VarStore`) and puts
//! them into the sites it needs; the same `Rc` may fill several sites (DKA's "mona"
//! placement shares one instance between the two positions of a block).
//!
//! Token form (ViT, SAM ViT and TinyViT blocks): `x: [batch, prefix + h*w, dim]`, the `prefix`
//! tokens (CLS, prompts) first, then the patch grid row-major. SAM's `[batch, h, w, dim]` maps
//! are flattened to this form (prefix 0, or the prompt count in a prompted global block) before a
//! site sees them; TinyViT's blocks already work on `[batch, h*w, dim]` (prefix 0).
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::rc::Rc;
use tch::Tensor;

/// The dotted name of `leaf` under `p` (`blocks.0.dka` + `down` -> `blocks.0.dka.down`), as
/// the variable store names it: how exportable modules record where their tensors are.
pub fn path_name(p: &tch::nn::Path, leaf: &str) -> String {
    p.components()
        .chain((!leaf.is_empty()).then_some(leaf))
        .collect::<Vec<_>>()
        .join(".")
}

/// Blocks (or stages) selected by an optional list of indices (`None` = all): where a method
/// fills sites.
pub fn selected(layers: &Option<Vec<usize>>, i: usize) -> bool {
    layers.as_ref().is_none_or(|l| l.contains(&i))
}

/// Per (key type, value type): a `HashMap<K, Rc<V>>`, boxed.
type Memo = HashMap<TypeId, Box<dyn Any>>;

thread_local! {
    static BLOCK_MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

/// Opened by every backbone block around its forward. While it is open, the modules in the
/// block's sites can keep work they would otherwise repeat within the block ([`block_memo`]);
/// a backbone opens the scope without knowing which method fills its sites or whether any of
/// them uses it. Nested scopes share the outermost one's memo, which is dropped when that
/// scope closes.
pub struct BlockScope {
    outermost: bool,
}

impl BlockScope {
    pub fn enter() -> Self {
        let outermost = BLOCK_MEMO.with(|m| {
            let mut m = m.borrow_mut();
            let outermost = m.is_none();
            if outermost {
                *m = Some(Memo::new());
            }
            outermost
        });
        Self { outermost }
    }

    /// Whether a block scope is open on this thread.
    pub fn is_open() -> bool {
        BLOCK_MEMO.with(|m| m.borrow().is_some())
    }
}

impl Drop for BlockScope {
    fn drop(&mut self) {
        if self.outermost {
            BLOCK_MEMO.with(|m| *m.borrow_mut() = None);
        }
    }
}

/// Inside a [`BlockScope`], the value kept for `key`, made by `make` the first time it is
/// asked for in the scope; `None` outside any scope (nothing is kept). Keys of different types
/// (or values of different types) never meet.
pub fn block_memo<K, V>(key: K, make: impl FnOnce() -> V) -> Option<Rc<V>>
where
    K: Hash + Eq + 'static,
    V: 'static,
{
    let slot = TypeId::of::<(K, V)>();
    let lookup = |m: &mut Memo, key: &K| -> Option<Rc<V>> {
        m.get(&slot)?
            .downcast_ref::<HashMap<K, Rc<V>>>()
            .expect("a memo slot holds its own type")
            .get(key)
            .cloned()
    };
    let found = BLOCK_MEMO.with(|m| m.borrow_mut().as_mut().map(|m| lookup(m, &key)))?;
    if let Some(v) = found {
        return Some(v);
    }
    // Made outside the borrow: `make` may itself run modules that use the memo.
    let v = Rc::new(make());
    BLOCK_MEMO.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            m.entry(slot)
                .or_insert_with(|| Box::new(HashMap::<K, Rc<V>>::new()))
                .downcast_mut::<HashMap<K, Rc<V>>>()
                .expect("a memo slot holds its own type")
                .insert(key, v.clone());
        }
    });
    Some(v)
}

/// Layout of a token sequence: how many prefix tokens precede an `h x w` patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    pub prefix: i64,
    pub h: i64,
    pub w: i64,
}

impl TokenLayout {
    pub fn tokens(&self) -> i64 {
        self.prefix + self.h * self.w
    }
}

/// A module mapping tokens to tokens of the same shape (`[batch, tokens, dim]`).
pub trait TokenModule: Debug {
    fn forward_t(&self, x: &Tensor, layout: TokenLayout, train: bool) -> Tensor;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A module running beside a residual branch: it sees the branch's residual input `x` and the
/// normalised input `normed` (what the branch itself sees) and returns a term that is added.
pub trait ParallelModule: Debug {
    fn forward_t(&self, x: &Tensor, normed: &Tensor, layout: TokenLayout, train: bool) -> Tensor;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A term added to the output of a frozen Linear layer, computed from that layer's input
/// (LoRA: `(alpha/r) B A x`). Input and output keep every leading dimension; the output is in
/// the layer's own row order (for a fused `qkv`, see [`QkvLayout`]).
pub trait LinearDelta: Debug {
    fn delta(&self, input: &Tensor, train: bool) -> Tensor;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A term added to the output of a frozen convolution, computed from that convolution's input
/// (LoRA on a conv: `(alpha/r) B(A(x))`, A a conv with the layer's kernel and stride, B 1x1).
/// `input: [batch, c_in, h, w]` -> `[batch, c_out, h', w']`, the layer's own output shape.
pub trait ConvDelta: Debug {
    fn delta(&self, input: &Tensor, train: bool) -> Tensor;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A module on a CNN feature map `[batch, channels, h, w]`, same shape out.
pub trait MapModule: Debug {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Extra tokens inserted after the class token (visual prompt tuning). SAM's encoder has no
/// class token: there block `layer` means the `layer`-th **global-attention** block, the prompts
/// come first in that block's sequence and are dropped after it (`None` = no prompts there).
pub trait PromptModule: Debug {
    /// Number of prompt tokens `p`.
    fn count(&self) -> i64;
    /// Prompts `[batch, p, dim]` for block `layer` (per sample, so that dropout draws a mask
    /// per sample). Block 0 inserts them; a later block that gets `Some` replaces the previous
    /// ones (deep prompts); `None` keeps what is there.
    fn prompts(&self, layer: usize, batch: i64, train: bool) -> Option<Tensor>;

    /// What this module computes and where its tensors are, for `dka export --format torch`
    /// (`python/dka_torch.py` rebuilds it from this); `None`: it cannot be exported.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The sites of a transformer block:
///
/// ```text
/// x = x + attn_branch(Attn(LN1 x)) + attn_parallel(x, LN1 x)
/// x = after_attn(x)
/// x = x + mlp_branch(MLP(LN2 x)) + mlp_parallel(x, LN2 x)
/// x = after_mlp(x)
/// ```
/// with `qkv`, `proj`, `fc1`, `fc2` adding a delta to those Linear layers. Layer scale, when
/// the block has one, applies to the branch output before `*_branch`.
#[derive(Debug, Default, Clone)]
pub struct BlockSites {
    pub attn_branch: Option<Rc<dyn TokenModule>>,
    pub attn_parallel: Option<Rc<dyn ParallelModule>>,
    pub after_attn: Option<Rc<dyn TokenModule>>,
    pub mlp_branch: Option<Rc<dyn TokenModule>>,
    pub mlp_parallel: Option<Rc<dyn ParallelModule>>,
    pub after_mlp: Option<Rc<dyn TokenModule>>,
    pub qkv: Option<Rc<dyn LinearDelta>>,
    pub proj: Option<Rc<dyn LinearDelta>>,
    pub fc1: Option<Rc<dyn LinearDelta>>,
    pub fc2: Option<Rc<dyn LinearDelta>>,
}

impl BlockSites {
    /// Every filled site's export description by site name (`qkv`, `attn_branch`, …); an
    /// error names the first site whose module cannot be exported.
    pub fn export(&self) -> crate::Result<serde_json::Map<String, serde_json::Value>> {
        let mut out = serde_json::Map::new();
        let unsupported = |site: &str| {
            crate::CoreError::Invalid(format!(
                "the module in site {site} cannot be exported for PyTorch"
            ))
        };
        let tokens = [
            ("attn_branch", &self.attn_branch),
            ("after_attn", &self.after_attn),
            ("mlp_branch", &self.mlp_branch),
            ("after_mlp", &self.after_mlp),
        ];
        for (name, site) in tokens {
            if let Some(m) = site {
                out.insert(name.into(), m.export().ok_or_else(|| unsupported(name))?);
            }
        }
        for (name, site) in [
            ("attn_parallel", &self.attn_parallel),
            ("mlp_parallel", &self.mlp_parallel),
        ] {
            if let Some(m) = site {
                out.insert(name.into(), m.export().ok_or_else(|| unsupported(name))?);
            }
        }
        for (name, site) in [
            ("qkv", &self.qkv),
            ("proj", &self.proj),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ] {
            if let Some(m) = site {
                out.insert(name.into(), m.export().ok_or_else(|| unsupported(name))?);
            }
        }
        Ok(out)
    }
}

/// Names of the Linear layers of a transformer block that accept a [`LinearDelta`].
pub const LINEAR_SITES: [&str; 4] = ["qkv", "proj", "fc1", "fc2"];

impl BlockSites {
    /// The delta slot of the Linear layer called `name` (timm's name: `qkv`, `proj`, `fc1`,
    /// `fc2`).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Option<Rc<dyn LinearDelta>>> {
        match name {
            "qkv" => Some(&mut self.qkv),
            "proj" => Some(&mut self.proj),
            "fc1" => Some(&mut self.fc1),
            "fc2" => Some(&mut self.fc2),
            _ => None,
        }
    }
}

/// How a fused `qkv` Linear orders its `3·dim` output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QkvLayout {
    /// `[q | k | v]`, each `dim` rows with the heads inside (timm's ViT and SAM).
    #[default]
    Grouped,
    /// `[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]`, one `3·dim/heads` group per head (TinyViT, LeViT).
    PerHead { heads: i64 },
}

impl QkvLayout {
    /// Reorders a `[..., 3·dim]` tensor from the grouped `[q | k | v]` order into this layout.
    pub fn from_grouped(&self, t: &Tensor) -> Tensor {
        match *self {
            QkvLayout::Grouped => t.shallow_clone(),
            QkvLayout::PerHead { heads } => {
                let mut shape = t.size();
                let n = shape.pop().expect("at least 1-D");
                let mut split = shape.clone();
                split.extend([3, heads, n / (3 * heads)]);
                let d = split.len() as i64;
                shape.push(n);
                t.reshape(split.as_slice())
                    .transpose(d - 3, d - 2)
                    .reshape(shape.as_slice())
            }
        }
    }

    /// Row permutation `perm` with `native[i] = grouped[perm[i]]` (for rewriting weights).
    pub fn grouped_rows(&self, dim: i64) -> Vec<i64> {
        let idx = Tensor::arange(3 * dim, (tch::Kind::Int64, tch::Device::Cpu));
        Vec::<i64>::try_from(self.from_grouped(&idx)).expect("int64 indices")
    }
}

/// What a method may need to know about a transformer block besides its sites.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBlockInfo {
    /// State-dict path of the block (`blocks.3`, `layers.1.blocks.0`); its Linear layers are
    /// `<path>.attn.qkv`, `<path>.attn.proj`, `<path>.mlp.fc1`, `<path>.mlp.fc2`.
    pub path: String,
    pub dim: i64,
    pub mlp_hidden: i64,
    pub qkv: QkvLayout,
}

/// Geometry of a square-kernel convolution (what a [`ConvDelta`] must reproduce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: i64,
    pub c_out: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}

/// Names of the convolutions of a CNN residual block that accept a [`ConvDelta`] (timm's
/// names inside `layerK.N`: basic blocks have `conv1`, `conv2`; bottlenecks also `conv3`).
pub const CONV_SITES: [&str; 3] = ["conv1", "conv2", "conv3"];

/// The sites of a CNN residual block: `y = after_block(block(x) + parallel(x))`, with
/// `convs[i]` adding a delta to the output of the block's conv `i+1` (before its BatchNorm).
#[derive(Debug, Default, Clone)]
pub struct MapSites {
    pub parallel: Option<Rc<dyn MapModule>>,
    pub after_block: Option<Rc<dyn MapModule>>,
    pub convs: [Option<Rc<dyn ConvDelta>>; 3],
}

pub(crate) fn apply_token(
    site: &Option<Rc<dyn TokenModule>>,
    x: Tensor,
    l: TokenLayout,
    train: bool,
) -> Tensor {
    match site {
        Some(m) if crate::probe::on() => {
            let y = m.forward_t(&x, l, train);
            crate::probe::record("token", &x, &(&y - &x));
            y
        }
        Some(m) => m.forward_t(&x, l, train),
        None => x,
    }
}

pub(crate) fn add_parallel(
    site: &Option<Rc<dyn ParallelModule>>,
    sum: Tensor,
    x: &Tensor,
    normed: &Tensor,
    l: TokenLayout,
    train: bool,
) -> Tensor {
    match site {
        Some(m) => {
            let t = m.forward_t(x, normed, l, train);
            if crate::probe::on() {
                crate::probe::record("parallel", x, &t);
            }
            sum + t
        }
        None => sum,
    }
}

/// `conv(x) + delta(x)` for a frozen convolution with an optional delta site.
pub(crate) fn conv_with(
    layer: &tch::nn::Conv2D,
    spec: &ConvSpec,
    site: &Option<Rc<dyn ConvDelta>>,
    x: &Tensor,
    train: bool,
) -> Tensor {
    let y = crate::reduced::conv2d(layer, x, spec.stride, spec.padding, 1);
    match site {
        Some(d) => {
            let t = d.delta(x, train);
            if crate::probe::on() {
                crate::probe::record("conv", &y, &t);
            }
            y + t
        }
        None => y,
    }
}

/// `linear(x) + delta(x)` for a frozen Linear with an optional delta site.
pub(crate) fn linear_with(
    layer: &tch::nn::Linear,
    site: &Option<Rc<dyn LinearDelta>>,
    x: &Tensor,
    train: bool,
) -> Tensor {
    let y = crate::reduced::linear(layer, x);
    match site {
        Some(d) => {
            let t = d.delta(x, train);
            if crate::probe::on() {
                crate::probe::record("linear", &y, &t);
            }
            y + t
        }
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_memo_keeps_values_only_inside_a_scope() {
        let mut made = 0;
        assert!(
            block_memo(1u32, || 10).is_none(),
            "nothing is kept outside a scope"
        );
        {
            let _outer = BlockScope::enter();
            let a = block_memo(1u32, || {
                made += 1;
                10
            });
            {
                let _inner = BlockScope::enter();
                let b = block_memo(1u32, || {
                    made += 1;
                    11
                });
                assert_eq!(
                    (*a.unwrap(), *b.unwrap()),
                    (10, 10),
                    "nested scopes share it"
                );
            }
            assert!(
                BlockScope::is_open(),
                "closing an inner scope keeps the outer one"
            );
            assert_eq!(*block_memo(2u32, || 20).unwrap(), 20);
            assert_eq!(
                *block_memo(1u64, || 30u8).unwrap(),
                30,
                "other types, other slots"
            );
        }
        assert_eq!(made, 1);
        assert!(!BlockScope::is_open());
        assert!(block_memo(1u32, || 10).is_none());
    }
}
