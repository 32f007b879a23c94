//! DKA's learnable kernel sizes (Table 3b): one `k_max` kernel per channel times
//! `sigmoid((ρ − r)/τ)` with `ρ = init_radius + (k_max/2)·θ`.
//! - the gradients of kernel, bias and θ equal central finite differences (f64) on every path;
//! - at DKA's Adam learning rate (1e-3) the radius actually learns: fitted to the output of a
//!   kernel of known radius it moves towards it by more than a pixel in 300 steps (measured:
//!   1.4 to 2.3 px), whether or not the kernel trains with it; a radius stored in pixels
//!   moves about 0.3 px;
//! - `learned_radii` reports every module's radii from an adapter store.
use dka_core::dka::{
    learned_radii, ConvPath, DkaConfig, Kernels, LearnableKernel, LearnableRadius,
};
use dka_core::method::Method;
use dka_core::{Backbone, BackboneConfig};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn pseudo(shape: &[i64], seed: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * (0.7919 + 0.1307 * seed) + seed).sin())
        .view(shape)
}

/// A loss weighting every output differently.
fn loss(k: &Kernels, z: &Tensor, path: ConvPath) -> Tensor {
    let out = k.forward(z, path);
    let w = pseudo(&out.size(), 9.0);
    (out * w).sum(Kind::Double)
}

#[test]
fn learnable_kernel_gradients_match_central_differences() {
    let (c, k) = (2, 7);
    // A 5x6 map: the 7x7 kernel is cropped to 7x7 (2h−1 = 9 ≥ 7), so every tap matters.
    let z = pseudo(&[2, c, 5, 6], 1.0);
    for path in [
        ConvPath::Reference,
        ConvPath::Direct,
        ConvPath::Fft,
        ConvPath::FftToeplitz,
    ] {
        let kernels = Kernels::Learnable {
            kernel: (pseudo(&[c, 1, k, k], 2.0) * 0.5).set_requires_grad(true),
            bias: Some((pseudo(&[c], 3.0) * 0.1).set_requires_grad(true)),
            radius: LearnableRadius {
                // ρ = 1.6 and 2.9: both inside the kernel, many taps near the mask's edge.
                theta: Tensor::from_slice(&[0.1f64, 0.9]).set_requires_grad(true),
                init_radius: 1.25,
                scale: 3.5,
                // (scale = k_max / 2 as DKA builds it)
            },
            tau: 0.7,
        };
        let Kernels::Learnable {
            kernel,
            bias,
            radius,
            ..
        } = &kernels
        else {
            unreachable!()
        };
        let params = [
            ("kernel", kernel.shallow_clone()),
            ("bias", bias.as_ref().unwrap().shallow_clone()),
            ("theta", radius.theta.shallow_clone()),
        ];
        loss(&kernels, &z, path).backward();
        let eps = 1e-6;
        for (name, p) in &params {
            let g = p.grad().copy();
            let flat = p.view([-1]);
            let mut worst = 0f64;
            for i in 0..flat.numel() as i64 {
                let x0 = flat.double_value(&[i]);
                let at = |x: f64| {
                    tch::no_grad(|| {
                        let _ = flat.get(i).fill_(x);
                        loss(&kernels, &z, path).double_value(&[])
                    })
                };
                let fd = (at(x0 + eps) - at(x0 - eps)) / (2.0 * eps);
                tch::no_grad(|| {
                    let _ = flat.get(i).fill_(x0);
                });
                let an = g.view([-1]).double_value(&[i]);
                worst = worst.max((an - fd).abs() / an.abs().max(1.0));
            }
            // Central differences in f64 with eps 1e-6: truncation ~1e-12, round-off ~1e-10;
            // measured at most 1.4e-9 relative.
            assert!(worst <= 1e-7, "{path:?} {name}: worst rel err {worst:e}");
        }
    }
}

/// Fits a learnable kernel (θ trained, or θ and the kernel) to the output of the same kernel
/// masked at radius `target`; returns the radii after `steps` Adam steps at lr 1e-3.
fn fit(init: f64, target: &[f64], scale: f64, train_kernel: bool, steps: usize) -> Vec<f64> {
    let (c, k, tau) = (target.len() as i64, 15, 0.5);
    let z = pseudo(&[4, c, 16, 16], 5.0);
    let raw = pseudo(&[c, 1, k, k], 6.0) + 0.2;
    let teacher = Kernels::Learnable {
        kernel: raw.shallow_clone(),
        bias: None,
        radius: LearnableRadius {
            // The teacher's radius per channel: 0 + 1 · θ = target.
            theta: Tensor::from_slice(target),
            init_radius: 0.0,
            scale: 1.0,
        },
        tau,
    };
    let y = tch::no_grad(|| teacher.forward(&z, ConvPath::Direct));
    let vs = nn::VarStore::new(Device::Cpu);
    let theta = vs.root().var("radius_theta", &[c], nn::Init::Const(0.0));
    let kernel = if train_kernel {
        let v = vs.root().var("kernel", &[c, 1, k, k], nn::Init::Const(0.0));
        tch::no_grad(|| v.shallow_clone().copy_(&raw));
        v
    } else {
        raw.to_kind(Kind::Float)
    };
    let student = Kernels::Learnable {
        kernel,
        bias: None,
        radius: LearnableRadius {
            theta,
            init_radius: init,
            scale,
        },
        tau,
    };
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let (z, y) = (z.to_kind(Kind::Float), y.to_kind(Kind::Float));
    for _ in 0..steps {
        let l = (student.forward(&z, ConvPath::Direct) - &y)
            .square()
            .mean(Kind::Float);
        opt.backward_step(&l);
    }
    Vec::<f64>::try_from(&student.radii().unwrap().to_kind(Kind::Double)).unwrap()
}

#[test]
fn the_radius_learns_at_the_adapters_learning_rate() {
    // k_max 15: scale 7.5 px per unit of θ. Radii starting at 2 px fitted to kernels of
    // radius 6 and 7 px must grow; starting at 6 px fitted to 2 and 1.5 px, shrink.
    let steps = 300;
    for train_kernel in [false, true] {
        let grow = fit(2.0, &[6.0, 7.0], 7.5, train_kernel, steps);
        let shrink = fit(6.0, &[2.0, 1.5], 7.5, train_kernel, steps);
        for (r, start, target) in [
            (grow[0], 2.0, 6.0),
            (grow[1], 2.0, 7.0),
            (shrink[0], 6.0, 2.0),
            (shrink[1], 6.0, 1.5),
        ] {
            let moved = (r - start) * (target - start).signum();
            assert!(
                moved > 1.0,
                "kernel trained {train_kernel}: radius {start} → {r}, target {target}: moved {moved} px towards it in {steps} steps"
            );
            // It does not overshoot the target by more than a fraction of a pixel.
            assert!((r - start).abs() < (target - start).abs() + 0.5);
        }
    }
    // The radius in pixels (scale 1) hardly moves: Adam's steps are about lr each, so 300
    // steps move it about 0.3 px (measured: 0.29).
    let pixels = fit(2.0, &[6.0, 7.0], 1.0, false, steps);
    assert!(pixels.iter().all(|r| (r - 2.0).abs() < 0.5), "{pixels:?}");
}

#[test]
fn learned_radii_reads_every_module() {
    let cfg = BackboneConfig::from_json_str(
        r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":16,"depth":2,"num_heads":2,"num_classes":0}"#,
    )
    .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &cfg).unwrap();
    let lk = LearnableKernel {
        k_max: 9,
        tau: 1.0,
        init_radius: 3.0,
    };
    let dka = DkaConfig {
        d_hat: 4,
        learnable_kernel: Some(lk),
        ..DkaConfig::authors()
    };
    let avs = nn::VarStore::new(Device::Cpu);
    dka.attach(&mut model, &avs.root()).unwrap();
    let names: Vec<String> = {
        let mut n: Vec<String> = avs.variables().into_keys().collect();
        n.sort();
        n
    };
    assert!(
        names.contains(&"blocks.0.dka.radius_theta".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".radius")));
    let radii = learned_radii(&avs, &dka);
    assert_eq!(radii.len(), 2);
    assert_eq!(radii[0], ("blocks.0.dka".to_string(), vec![3.0; 4]));
    tch::no_grad(|| {
        avs.variables()["blocks.1.dka.radius_theta"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.0f32, 0.5, -0.5, 1.0]));
    });
    // ρ = 3 + 4.5 θ.
    let radii = learned_radii(&avs, &dka);
    assert_eq!(
        radii[1],
        ("blocks.1.dka".to_string(), vec![3.0, 5.25, 0.75, 7.5])
    );
    assert!(learned_radii(&avs, &DkaConfig::authors()).is_empty());
}
