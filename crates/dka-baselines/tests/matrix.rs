//! One table of cases drives the same checks over every method (peft's idea):
//! identity at init where the method defines it; after one optimiser step only the method's
//! tensors changed and frozen tensors got no gradient; save → load gives the same outputs;
//! the trainable-parameter count equals the method's formula (written out per case).
use dka_baselines::vpt::VptConfig;
use dka_baselines::{MethodConfig, NAMES};
use dka_core::BackboneConfig;
use tch::{Device, Kind, Tensor};

#[allow(dead_code)]
mod matrix_shared;
use matrix_shared::*;

#[test]
fn every_method_passes_the_shared_checks_on_a_vit() {
    let cfg = BackboneConfig::from_json_str(VIT).unwrap();
    for case in cases() {
        shared_checks(&cfg, &case);
    }
}

#[test]
fn cnn_methods_run_on_a_resnet_and_vit_only_methods_are_refused() {
    let cfg = BackboneConfig::from_json_str(RESNET).unwrap();
    let x = (Tensor::arange(2 * 3 * 64 * 64, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([2, 3, 64, 64]);
    for name in NAMES {
        let method = match name {
            // Prompt padding is built for the input size (a ResNet has none of its own).
            "vpt" => MethodConfig::Vpt(VptConfig {
                image_size: Some(64),
                ..Default::default()
            }),
            _ => MethodConfig::by_name(name).unwrap(),
        };
        match build(&cfg, &method, 1) {
            Ok(m) => {
                assert!(
                    ["full", "linear", "bitfit", "vpt", "lora", "adapter", "convpass", "dka"]
                        .contains(&name),
                    "{name} should be refused"
                );
                // Dropout draws from the process-wide RNG: keep it away from a concurrent build().
                let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
                let out = logits(&m, &x, true);
                out.sum(Kind::Float).backward();
                assert_eq!(out.size(), [2, 3], "{name}");
            }
            Err(e) => {
                assert!(
                    ["adaptformer", "ciat", "aim"].contains(&name),
                    "{name}: {e}"
                );
                assert!(
                    e.to_string().contains("does not apply to a resnet"),
                    "{name}: {e}"
                );
            }
        }
    }
}

#[test]
fn methods_parse_from_toml_and_json_and_unknown_fields_are_refused() {
    let m: MethodConfig = toml_like(r#"{"name":"lora","r":4,"qkv_parts":"qv"}"#).unwrap();
    assert!(matches!(m, MethodConfig::Lora(ref l) if l.r == 4));
    let m: MethodConfig =
        toml_like(r#"{"name":"dka","d_hat":192,"placement":"branch","conv_path":"fft"}"#).unwrap();
    assert!(matches!(m, MethodConfig::Dka(ref d) if d.d_hat == 192));
    let err = toml_like(r#"{"name":"adapter","dims":64}"#).unwrap_err();
    assert!(err.contains("dims"), "{err}");
}

fn toml_like(json: &str) -> Result<MethodConfig, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// Every trainable tensor of every method (head included) gets a defined, finite, non-zero
/// gradient. Methods that start as the identity block some gradients exactly at step 0: behind
/// a zero-initialised Up (Adapter, AdaptFormer, Convpass, CIAT, AIM, DKA with zero Up) the
/// gradient of Down and of everything before Up inside the module is `Upᵀ g = 0`, and LoRA's A
/// gets `Bᵀ g = 0` with B = 0. That is correct, not a wiring bug, so the check is made
/// honestly in two steps: at step 0 every gradient must be defined and finite and the
/// zero-initialised tensors themselves (Up, B) must get a non-zero one; then after one
/// sign-SGD step (which moves them off zero) every gradient must also be non-zero.
///
/// One exception is structural and asserted as such: with a class-token head, the last
/// block's DKA convolutions act only on patch tokens after the last attention, which the
/// class token never reads again (it skips the convs itself), so their gradient is exactly
/// zero. With average pooling they train like everything else.
#[test]
fn every_trainable_tensor_gets_a_finite_nonzero_gradient() {
    let x = input();
    let y = Tensor::from_slice(&[0i64, 1, 2, 1]);
    let avg = VIT.replace(
        r#""num_classes":0"#,
        r#""num_classes":0,"global_pool":"avg""#,
    );
    for (pool, json) in [("token", VIT.to_string()), ("avg", avg)] {
        let cfg = BackboneConfig::from_json_str(&json).unwrap();
        let last_block_convs = format!("blocks.{}.dka", DEPTH - 1);
        let dead =
            |n: &str| pool == "token" && n.starts_with(&last_block_convs) && n.contains(".conv_");
        for case in cases() {
            let name = format!("{pool} pool, {:?}", case.method)
                .chars()
                .take(70)
                .collect::<String>();
            let m = build(&cfg, &case.method, 1).unwrap();
            let mut named = trainable(&m);
            named.extend(
                m.head_vs
                    .variables()
                    .into_iter()
                    .map(|(n, t)| (format!("head.{n}"), t)),
            );
            let grads = |step: usize| -> Vec<(String, Tensor)> {
                for (_, t) in named.iter() {
                    let mut t = t.shallow_clone();
                    t.zero_grad();
                }
                // Dropout draws from the process-wide RNG: keep it away from a concurrent build().
                let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
                tch::manual_seed(step as i64);
                logits(&m, &x, true).cross_entropy_for_logits(&y).backward();
                named.iter().map(|(n, t)| (n.clone(), t.grad())).collect()
            };
            // Tensors that start at zero and get a gradient anyway: every bottleneck's Up
            // (AIM's fc2 is stored as `up` too) and LoRA's B.
            let zero_init = |n: &str| n.contains(".up.") || n.contains("lora_B");
            let finite = |n: &str, g: &Tensor| {
                assert!(g.defined(), "{name}: {n} got no gradient");
                assert!(
                    bool::try_from(g.isfinite().all()).unwrap(),
                    "{name}: {n} has a non-finite gradient"
                );
                g.abs().max().double_value(&[])
            };
            for (n, g) in grads(0) {
                let size = finite(&n, &g);
                if zero_init(&n) {
                    assert!(
                        size > 0.0,
                        "{name}: {n} (zero-initialised) got a zero gradient at step 0"
                    );
                }
            }
            // One sign-SGD step moves every tensor that has a non-zero gradient.
            tch::no_grad(|| {
                for (_, t) in named.iter() {
                    let g = t.grad();
                    let mut t = t.shallow_clone();
                    let _ = t.f_sub_(&(g.sign() * 1e-2)).unwrap();
                }
            });
            for (n, g) in grads(1) {
                let size = finite(&n, &g);
                if dead(&n) {
                    assert_eq!(size, 0.0, "{name}: {n} reaches the class token?");
                } else {
                    assert!(
                        size > 0.0,
                        "{name}: {n} got an all-zero gradient after one step"
                    );
                }
            }
        }
    }
}
