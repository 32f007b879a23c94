//! The fast depthwise paths equal the plain two-conv reference, outputs and gradients (of the
//! input and of both kernels): relative error max|fast - ref| / max|ref| <= 1e-5.
use dka_core::dka::{ConvPath, Kernels, LearnableRadius};
use dka_core::sites::BlockScope;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

/// Deterministic pseudo-random values without the global RNG (tests run in parallel threads
/// and `manual_seed` is process-wide).
fn param(shape: &[i64], seed: i64) -> Tensor {
    let n: i64 = shape.iter().product();
    let t = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.7919 + seed as f64 * 0.1307)
        + seed as f64)
        .sin()
        * 0.1;
    t.view(shape).set_requires_grad(true)
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// Builds fresh leaf tensors, runs `path`, returns output and gradients (input, kernels).
fn run(
    path: ConvPath,
    large: Option<i64>,
    small: Option<i64>,
    bias: bool,
    grid: (i64, i64),
) -> Vec<Tensor> {
    let c = 6;
    let z = param(&[2, c, grid.0, grid.1], 1);
    let mk = |k: Option<i64>, seed| {
        k.map(|k| {
            (
                param(&[c, 1, k, k], seed),
                bias.then(|| param(&[c], seed + 10)),
            )
        })
    };
    let kernels = Kernels::Fixed {
        large: mk(large, 2),
        small: mk(small, 3),
    };
    let out = kernels.forward(&z, path);
    backward_and_grads(&out, &z, &kernels)
}

/// Back-propagates a loss that weights every output differently (so gradients are not
/// symmetric); returns the output and the gradients of `z` and of every kernel and bias.
fn backward_and_grads(out: &Tensor, z: &Tensor, kernels: &Kernels) -> Vec<Tensor> {
    let w = Tensor::linspace(-1.0, 1.0, out.numel() as i64, (Kind::Float, Device::Cpu))
        .view(out.size().as_slice());
    (out * &w).sum(Kind::Float).backward();
    let mut res = vec![out.detach(), z.grad()];
    if let Kernels::Fixed { large, small } = kernels {
        for (k, b) in [large, small].into_iter().flatten() {
            res.push(k.grad());
            if let Some(b) = b {
                res.push(b.grad());
            }
        }
    }
    res
}

fn check(large: Option<i64>, small: Option<i64>, bias: bool, grid: (i64, i64)) {
    let reference = run(ConvPath::Reference, large, small, bias, grid);
    for path in [
        ConvPath::Direct,
        ConvPath::Fft,
        ConvPath::FftToeplitz,
        ConvPath::Toeplitz,
        ConvPath::Tuned,
        ConvPath::Auto,
    ] {
        // The full Toeplitz matrix is `hw x hw` per channel: 64x64 maps would take 400 MB.
        if path == ConvPath::Toeplitz && grid.0 * grid.1 > 1024 {
            continue;
        }
        let fast = run(path, large, small, bias, grid);
        for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
            let what = [
                "output",
                "grad input",
                "grad kernel 1",
                "grad kernel 2/bias",
                "grad",
                "grad",
            ][i];
            let e = rel_err(f, r);
            assert!(
                e <= TOL,
                "{path:?} {what}: kernels {large:?}+{small:?} on {grid:?}: rel err {e:e}"
            );
        }
    }
}

const GRIDS: [(i64, i64); 5] = [(7, 7), (14, 14), (14, 10), (32, 32), (64, 64)];

#[test]
fn dual_kernels_51_5_and_31_5() {
    for g in GRIDS {
        check(Some(51), Some(5), false, g);
        check(Some(31), Some(5), false, g);
    }
}

#[test]
fn dual_kernels_7_3_and_71_7() {
    for g in GRIDS {
        check(Some(7), Some(3), false, g);
        check(Some(71), Some(7), false, g);
    }
}

#[test]
fn single_branches_and_biases() {
    for g in GRIDS {
        check(Some(51), None, false, g);
        check(None, Some(5), false, g);
        check(Some(51), Some(5), true, g);
    }
}

#[test]
fn the_fft_and_direct_paths_agree_on_learnable_kernels() {
    let c = 4;
    let z = param(&[2, c, 20, 12], 5).detach();
    let learnable = |seed| Kernels::Learnable {
        kernel: param(&[c, 1, 31, 31], seed),
        bias: None,
        radius: LearnableRadius {
            theta: Tensor::from_slice(&[-0.5f32, 0.0, 0.5, 1.0]).set_requires_grad(true),
            init_radius: 6.0,
            scale: 9.0,
        },
        tau: 1.0,
    };
    let reference = learnable(7).forward(&z, ConvPath::Reference);
    for path in [
        ConvPath::Direct,
        ConvPath::Fft,
        ConvPath::FftToeplitz,
        ConvPath::Toeplitz,
    ] {
        let e = rel_err(&learnable(7).forward(&z, path), &reference);
        assert!(e <= TOL, "{path:?}: {e:e}");
    }
}

/// One module applied twice (`y = K(K(z) + z)`, as "mona" applies it after the attention and
/// after the MLP), optionally inside a `BlockScope` and optionally after a no-grad
/// application in that scope (what activation checkpointing's first pass leaves there).
/// Returns the output and the gradients of the input and of every kernel tensor.
fn run_twice(path: ConvPath, scoped: bool, no_grad_first: bool, grid: (i64, i64)) -> Vec<Tensor> {
    let c = 6;
    let z = param(&[2, c, grid.0, grid.1], 1);
    let kernels = Kernels::Fixed {
        large: Some((param(&[c, 1, 51, 51], 2), Some(param(&[c], 12)))),
        small: Some((param(&[c, 1, 5, 5], 3), Some(param(&[c], 13)))),
    };
    let _scope = scoped.then(BlockScope::enter);
    if no_grad_first {
        let _ = tch::no_grad(|| kernels.forward(&z, path));
    }
    let out = kernels.forward(&(kernels.forward(&z, path) + &z), path);
    backward_and_grads(&out, &z, &kernels)
}

/// Inside a scope the FFT path transforms a module's kernel once for both applications and
/// autograd sums both uses' gradients before the one backward through the transform: output
/// and gradients equal the plain reference applied twice without a scope, also when a no-grad
/// application came first in the scope (its spectrum, outside the graph, must not be reused).
#[test]
fn a_module_applied_twice_in_a_spectrum_scope_matches_the_reference() {
    let what = [
        "output",
        "grad input",
        "grad K51",
        "grad b51",
        "grad K5",
        "grad b5",
    ];
    for grid in [(14, 14), (32, 32), (14, 10)] {
        let reference = run_twice(ConvPath::Reference, false, false, grid);
        for (path, scoped, no_grad_first) in [
            ConvPath::Fft,
            ConvPath::FftToeplitz,
            ConvPath::Toeplitz,
            ConvPath::Tuned,
        ]
        .into_iter()
        .flat_map(|p| [(p, false, false), (p, true, false), (p, true, true)])
        {
            let fast = run_twice(path, scoped, no_grad_first, grid);
            for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
                assert!(
                    f.defined(),
                    "{}: undefined on {grid:?} ({path:?}, scoped {scoped}, no-grad first {no_grad_first})",
                    what[i]
                );
                let e = rel_err(f, r);
                assert!(
                    e <= TOL,
                    "{}: rel err {e:e} on {grid:?} ({path:?}, scoped {scoped}, no-grad first {no_grad_first})",
                    what[i]
                );
            }
        }
    }
}
