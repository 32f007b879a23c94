//! DKA against an independent reference written with plain tensor ops (Linear as a matmul,
//! each depthwise conv as `Tensor::conv2d(groups = d̂, padding k/2)` with its full kernel, the
//! prefix tokens skipping the convs, dropout off), rebuilt from the module's own weights, on a
//! non-square 3x5 patch grid; and the `mona` placement's one shared instance per block.
//!
//! Tolerance: `max|module − reference| ≤ tol · max|reference delta|` where the delta is the
//! adapter's contribution `f(x) − x`; tol 1e-5 in f32, 1e-12 in f64.
use dka_core::dka::{Activation, Branches, ConvPath, Dka, DkaConfig, LearnableKernel, Placement};
use dka_core::method::Method;
use dka_core::sites::{MapModule, TokenLayout, TokenModule};
use dka_core::{Backbone, BackboneConfig};
use std::collections::HashMap;
use std::rc::Rc;
use tch::{nn, Device, Kind, Tensor};

const DIM: i64 = 12;

/// Deterministic values without the process-wide RNG.
fn pseudo(shape: &[i64], seed: f64, kind: Kind) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * (0.7919 + 0.1307 * seed) + seed).sin())
        .view(shape)
        .to_kind(kind)
}

/// A module whose every tensor is O(0.1–1), so the adapter's delta is not negligible.
fn module(cfg: &DkaConfig, kind: Kind) -> (nn::VarStore, Dka) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let m = Dka::new(&vs.root(), DIM, cfg).unwrap();
    if kind == Kind::Double {
        vs.double();
    }
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, t)) in names.iter_mut().enumerate() {
            let scale = if name.contains("radius_theta") {
                0.2
            } else {
                0.4
            };
            t.copy_(&(pseudo(&t.size(), i as f64 + 1.0, kind) * scale));
        }
    });
    (vs, m)
}

struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.get(name)
    }

    /// `y = t Wᵀ (+ b)` over the last dimension.
    fn linear(&self, name: &str, t: &Tensor) -> Tensor {
        let y = t.matmul(&self.0[&format!("{name}.weight")].tr());
        match self.get(&format!("{name}.bias")) {
            Some(b) => y + b,
            None => y,
        }
    }

    /// Sum of the depthwise convs on `[b, d, h, w]`, each with its full kernel and padding
    /// k/2; the learnable kernel is masked here by its own formula.
    fn convs(&self, g: &Tensor, c: &DkaConfig) -> Tensor {
        let d = g.size()[1];
        let conv = |w: &Tensor, b: Option<&Tensor>| {
            let k = w.size()[2];
            g.conv2d(w, b, [1, 1], [k / 2, k / 2], [1, 1], d)
        };
        if let Some(l) = &c.learnable_kernel {
            let w = &self.0["conv.weight"];
            let rho = &self.0["radius_theta"] * l.radius_scale() + l.init_radius;
            let k = l.k_max;
            let a = Tensor::arange(k, (w.kind(), Device::Cpu)) - (k / 2) as f64;
            let r = (a.unsqueeze(1).square() + a.unsqueeze(0).square()).sqrt();
            let mask = ((rho.view([-1, 1, 1, 1]) - r.view([1, 1, k, k])) / l.tau).sigmoid();
            return conv(&(w * mask), self.get("conv.bias"));
        }
        ["conv_large", "conv_small"]
            .iter()
            .filter_map(|n| {
                self.get(&format!("{n}.weight"))
                    .map(|w| conv(w, self.get(&format!("{n}.bias"))))
            })
            .reduce(|a, b| a + b)
            .unwrap()
    }
}

fn weights(vs: &nn::VarStore) -> Weights {
    Weights(vs.variables().into_iter().collect())
}

/// Token form: `x + Up(GELU(cat(prefix, convs(grid))))` with `z = [GELU](Down x)`.
fn reference_tokens(w: &Weights, x: &Tensor, l: TokenLayout, c: &DkaConfig) -> Tensor {
    let (b, _, _) = x.size3().unwrap();
    let mut z = w.linear("down", x);
    if c.activation == Activation::Authors {
        z = z.gelu("none");
    }
    let d = z.size()[2];
    let grid = z
        .narrow(1, l.prefix, l.h * l.w)
        .reshape([b, l.h, l.w, d])
        .permute([0, 3, 1, 2])
        .contiguous();
    let conv = w
        .convs(&grid, c)
        .permute([0, 2, 3, 1])
        .reshape([b, l.h * l.w, d]);
    let y = Tensor::cat(&[z.narrow(1, 0, l.prefix), conv], 1);
    x + w.linear("up", &y.gelu("none"))
}

/// Map form: Down/Up as per-pixel Linears on `[b, C, H, W]`.
fn reference_map(w: &Weights, x: &Tensor, c: &DkaConfig) -> Tensor {
    let pix = |name: &str, t: &Tensor| {
        w.linear(name, &t.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
            .contiguous()
    };
    let mut z = pix("down", x);
    if c.activation == Activation::Authors {
        z = z.gelu("none");
    }
    x + pix("up", &w.convs(&z, c).gelu("none"))
}

fn rel_err(out: &Tensor, reference: &Tensor, x: &Tensor) -> f64 {
    let scale = (reference - x).abs().max().double_value(&[]);
    assert!(scale > 1e-3, "the adapter's delta must not be negligible");
    (out - reference).abs().max().double_value(&[]) / scale
}

fn configs() -> Vec<(&'static str, DkaConfig)> {
    let small = |c: DkaConfig| DkaConfig { d_hat: 4, ..c };
    vec![
        ("authors (two GELUs, no bias)", small(DkaConfig::authors())),
        ("paper (one GELU, biases)", small(DkaConfig::paper())),
        (
            "paper, large branch only",
            small(DkaConfig {
                branches: Branches::Large,
                ..DkaConfig::paper()
            }),
        ),
        (
            "authors, 7x7 + 3x3",
            small(DkaConfig {
                large_kernel: 7,
                small_kernel: 3,
                ..DkaConfig::authors()
            }),
        ),
        (
            "paper, learnable kernel",
            small(DkaConfig {
                learnable_kernel: Some(LearnableKernel {
                    k_max: 9,
                    tau: 0.8,
                    init_radius: 2.5,
                }),
                ..DkaConfig::paper()
            }),
        ),
    ]
}

const PATHS: [ConvPath; 5] = [
    ConvPath::Reference,
    ConvPath::Direct,
    ConvPath::Fft,
    ConvPath::FftToeplitz,
    ConvPath::Auto,
];

#[test]
fn token_form_equals_a_plain_conv2d_reference_on_a_3x5_grid() {
    for (kind, tol) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
        for (what, base) in configs() {
            for path in PATHS {
                let c = DkaConfig {
                    conv_path: path,
                    ..base.clone()
                };
                let (vs, m) = module(&c, kind);
                let w = weights(&vs);
                // CLS only, and CLS + two prompt tokens.
                for prefix in [1, 3] {
                    let l = TokenLayout { prefix, h: 3, w: 5 };
                    let x = pseudo(&[2, l.tokens(), DIM], 0.5, kind);
                    let out = tch::no_grad(|| TokenModule::forward_t(&m, &x, l, false));
                    let e = rel_err(&out, &reference_tokens(&w, &x, l, &c), &x);
                    assert!(
                        e <= tol,
                        "{what}, {path:?}, {kind:?}, prefix {prefix}: rel err {e:e}"
                    );
                    // The prefix tokens skip the convs: each depends on itself only.
                    let x2 = x.copy();
                    let _ = x2.narrow(1, prefix, 1).fill_(3.0);
                    let out2 = tch::no_grad(|| TokenModule::forward_t(&m, &x2, l, false));
                    assert!(out2.narrow(1, 0, prefix).equal(&out.narrow(1, 0, prefix)));
                }
            }
        }
    }
}

#[test]
fn map_form_equals_the_reference_on_a_3x5_map() {
    for (kind, tol) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
        for (what, base) in configs() {
            for path in PATHS {
                let c = DkaConfig {
                    conv_path: path,
                    ..base.clone()
                };
                let (vs, m) = module(&c, kind);
                let x = pseudo(&[2, DIM, 3, 5], 0.25, kind);
                let out = tch::no_grad(|| MapModule::forward_t(&m, &x, false));
                let e = rel_err(&out, &reference_map(&weights(&vs), &x, &c), &x);
                assert!(e <= tol, "{what}, {path:?}, {kind:?}: rel err {e:e}");
            }
        }
    }
}

fn vit() -> BackboneConfig {
    BackboneConfig::from_json_str(
        r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":12,"depth":2,"num_heads":2,"num_classes":0}"#,
    )
    .unwrap()
}

fn run(m: &Rc<dyn TokenModule>, x: &Tensor, l: TokenLayout) -> Tensor {
    tch::no_grad(|| m.forward_t(x, l, false))
}

fn bump(vs: &nn::VarStore, name: &str) {
    tch::no_grad(|| {
        let mut t = vs.variables()[name].shallow_clone();
        let _ = t.g_add_scalar_(0.1);
    });
}

#[test]
fn mona_fills_both_sites_of_a_block_with_one_instance() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &vit()).unwrap();
    let avs = nn::VarStore::new(Device::Cpu);
    let c = DkaConfig {
        placement: Placement::Mona,
        d_hat: 4,
        ..DkaConfig::authors()
    };
    c.attach(&mut model, &avs.root()).unwrap();
    let l = TokenLayout {
        prefix: 1,
        h: 4,
        w: 4,
    };
    let x = pseudo(&[2, l.tokens(), DIM], 0.1, Kind::Float);
    for (i, (_, sites)) in model.token_blocks_mut().into_iter().enumerate() {
        let a = sites.after_attn.clone().expect("mona fills after_attn");
        let b = sites.after_mlp.clone().expect("mona fills after_mlp");
        assert!(
            Rc::ptr_eq(&a, &b),
            "block {i}: after_attn and after_mlp must hold the same instance"
        );
        assert!(sites.attn_branch.is_none() && sites.mlp_branch.is_none());
        let (ya, yb) = (run(&a, &x, l), run(&b, &x, l));
        bump(&avs, &format!("blocks.{i}.dka.up.weight"));
        let (za, zb) = (run(&a, &x, l), run(&b, &x, l));
        assert!(
            !za.equal(&ya) && !zb.equal(&yb),
            "block {i}: both sites move"
        );
        assert!(za.equal(&zb));
    }
}

#[test]
fn branch_placement_has_two_independent_instances() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &vit()).unwrap();
    let avs = nn::VarStore::new(Device::Cpu);
    let c = DkaConfig {
        placement: Placement::Branch,
        d_hat: 4,
        ..DkaConfig::authors()
    };
    c.attach(&mut model, &avs.root()).unwrap();
    let l = TokenLayout {
        prefix: 1,
        h: 4,
        w: 4,
    };
    let x = pseudo(&[2, l.tokens(), DIM], 0.1, Kind::Float);
    for (i, (_, sites)) in model.token_blocks_mut().into_iter().enumerate() {
        let a = sites.attn_branch.clone().unwrap();
        let b = sites.mlp_branch.clone().unwrap();
        assert!(!Rc::ptr_eq(&a, &b));
        assert!(sites.after_attn.is_none() && sites.after_mlp.is_none());
        let (ya, yb) = (run(&a, &x, l), run(&b, &x, l));
        bump(&avs, &format!("blocks.{i}.dka_attn.up.weight"));
        assert!(!run(&a, &x, l).equal(&ya));
        assert!(
            run(&b, &x, l).equal(&yb),
            "block {i}: the MLP's instance is its own"
        );
    }
}
