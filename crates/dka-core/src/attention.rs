//! Scaled dot-product attention for the backbones, with the implementation chosen per device,
//! type and shape.
//!
//! libtorch's `scaled_dot_product_attention` ("fused") is what timm calls. On the CPU it has two
//! implementations: a flash kernel, and a "math" fallback that libtorch takes when the mask is
//! 3-D or needs a gradient (TinyViT's per-head bias, SAM's decomposed relative positions). The
//! fallback computes `softmax(q kᵀ · scale + bias) v` with extra checks for rows that are all
//! `-inf` (an `isneginf`, an `all` and a `where` over every score matrix); the flash kernel's
//! bf16 backward is slow on short sequences. Measured on a 2-core AMD EPYC (AVX512-BF16),
//! libtorch 2.11, forward + backward of `[4, 12, n, 64]` under bf16 autocast, explicit / fused:
//! 0.18 at n = 37, 0.43 at 197, 0.58 at 401, 0.71 at 577, 1.21 at 785; in fp32 the two are within
//! ±30 % up to 401 tokens and fused wins beyond. So on the CPU the explicit product runs where
//! the fallback would, and for reduced-precision attention over at most [`EXPLICIT_MAX_TOKENS`]
//! keys; everything else (and every CUDA device, where the fused kernels are the fast ones) calls
//! the fused function. `DKA_ATTENTION=fused` or `explicit` overrides the choice (to compare).
//!
//! The explicit form is timm's non-fused path (`attn = q @ k.T * scale; attn = attn + bias;
//! attn.softmax(-1) @ v`): under autocast the products run in the reduced type, as in PyTorch.
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// The longest key sequence that reduced-precision attention on the CPU computes explicitly.
pub const EXPLICIT_MAX_TOKENS: i64 = 640;

/// Which implementation computes an attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// libtorch's `scaled_dot_product_attention`.
    Fused,
    /// `softmax(q kᵀ · scale + bias) v` as three operations.
    Explicit,
}

/// What the choice depends on: the device, the type of `q`, the number of keys, and the bias's
/// rank and whether it needs a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub device: Device,
    pub kind: Kind,
    pub keys: i64,
    /// `(rank, requires_grad)` of the additive bias, if there is one.
    pub bias: Option<(usize, bool)>,
}

impl AttentionPath {
    /// The rule described in the module documentation (no override).
    pub fn choose(s: AttentionShape) -> AttentionPath {
        if s.device != Device::Cpu {
            return AttentionPath::Fused;
        }
        // libtorch's CPU flash kernel takes a 2-D or 4-D mask that needs no gradient; any other
        // goes to the math fallback, which the explicit form equals without its -inf checks.
        let fallback = matches!(s.bias, Some((rank, grad)) if grad || !(rank == 2 || rank == 4));
        let reduced = matches!(s.kind, Kind::BFloat16 | Kind::Half);
        if fallback || (reduced && s.keys <= EXPLICIT_MAX_TOKENS) {
            AttentionPath::Explicit
        } else {
            AttentionPath::Fused
        }
    }
}

/// `DKA_ATTENTION`: `fused` or `explicit` forces a path; unset, empty or `auto` chooses.
fn forced() -> Option<AttentionPath> {
    static FORCED: OnceLock<Option<AttentionPath>> = OnceLock::new();
    *FORCED.get_or_init(|| {
        match std::env::var("DKA_ATTENTION")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            Some("fused") => Some(AttentionPath::Fused),
            Some("explicit") => Some(AttentionPath::Explicit),
            Some("" | "auto") | None => None,
            Some(other) => {
                tracing::warn!(
                    "DKA_ATTENTION={other} is not fused, explicit or auto: choosing per shape"
                );
                None
            }
        }
    })
}

/// `softmax(q kᵀ / sqrt(head_dim) + bias) v` for `q, k, v: [..., tokens, head_dim]`; `bias`
/// broadcasts against the `[..., queries, keys]` scores.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let path = forced().unwrap_or_else(|| {
        AttentionPath::choose(AttentionShape {
            device: q.device(),
            kind: q.kind(),
            keys: k.size()[k.dim() - 2],
            bias: bias.map(|b| (b.dim(), b.requires_grad())),
        })
    });
    attention_with(path, q, k, v, bias)
}

/// [`attention`] by the given path.
pub fn attention_with(
    path: AttentionPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Tensor {
    match path {
        AttentionPath::Fused => {
            Tensor::scaled_dot_product_attention(q, k, v, bias, 0.0, false, None, false)
        }
        AttentionPath::Explicit => {
            let scale = (q.size()[q.dim() - 1] as f64).powf(-0.5);
            let scores = q.matmul(&k.transpose(-2, -1)) * scale;
            let scores = match bias {
                Some(b) => scores + b,
                None => scores,
            };
            scores.softmax(-1, None::<Kind>).matmul(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_sends_the_cpu_fallback_and_short_reduced_attention_to_the_explicit_form() {
        use AttentionPath::*;
        let (cpu, gpu, max) = (Device::Cpu, Device::Cuda(0), EXPLICIT_MAX_TOKENS);
        let cases = [
            // Where libtorch would take its math fallback: a 3-D mask, a mask with a gradient.
            (cpu, Kind::Float, 196, Some((3, false)), Explicit),
            (cpu, Kind::Float, 4096, Some((4, true)), Explicit),
            // fp32 without a mask or with a flash-ready one: fused.
            (cpu, Kind::Float, 37, None, Fused),
            (cpu, Kind::Float, 197, Some((4, false)), Fused),
            // Reduced precision: explicit up to the limit, fused beyond.
            (cpu, Kind::BFloat16, 197, None, Explicit),
            (cpu, Kind::Half, max, None, Explicit),
            (cpu, Kind::BFloat16, max + 1, None, Fused),
            // CUDA: always the fused kernels.
            (gpu, Kind::BFloat16, 37, None, Fused),
            (gpu, Kind::BFloat16, 37, Some((3, false)), Fused),
            (gpu, Kind::BFloat16, 37, Some((4, true)), Fused),
        ];
        for (device, kind, keys, bias, want) in cases {
            let s = AttentionShape {
                device,
                kind,
                keys,
                bias,
            };
            assert_eq!(AttentionPath::choose(s), want, "{s:?}");
        }
    }

    /// Both paths give the same output and the same gradients of q, k, v and a trainable bias
    /// (fp32; the two differ by float round-off only: 1e-5 absolute on values of order 1).
    #[test]
    fn the_explicit_form_equals_libtorchs_attention_with_gradients() {
        tch::manual_seed(3);
        for bias_shape in [None, Some(vec![3, 7, 7]), Some(vec![2, 3, 7, 7])] {
            let mk =
                || Tensor::randn([2, 3, 7, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let (q, k, v) = (mk(), mk(), mk());
            let bias = bias_shape.as_ref().map(|s| {
                Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true)
            });
            let w = Tensor::randn([2, 3, 7, 8], (Kind::Float, Device::Cpu));
            let run = |path| {
                let o = attention_with(path, &q, &k, &v, bias.as_ref());
                let mut inputs = vec![&q, &k, &v];
                if let Some(b) = &bias {
                    inputs.push(b);
                }
                let g = Tensor::run_backward(&[(&o * &w).sum(Kind::Float)], &inputs, false, false);
                (o.detach(), g)
            };
            let (of, gf) = run(AttentionPath::Fused);
            let (oe, ge) = run(AttentionPath::Explicit);
            let err = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
            assert!(
                err(&of, &oe) < 1e-5,
                "outputs differ by {} ({bias_shape:?})",
                err(&of, &oe)
            );
            for (i, (a, b)) in gf.iter().zip(&ge).enumerate() {
                assert!(
                    err(a, b) < 1e-5,
                    "gradient {i} differs by {} ({bias_shape:?})",
                    err(a, b)
                );
            }
        }
    }
}
