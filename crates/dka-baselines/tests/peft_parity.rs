//! LoRA interop with peft (0.21.2, pinned in .venv), both ways:
//! - adapters that peft trained load through our peft reader and give peft's outputs: on a timm
//!   ViT (fixture `peft_lora`: whole `qkv` and `fc2`, r 4, alpha 8, random non-zero B) and on
//!   the 3x3 convs of a timm bottleneck ResNet (fixture `peft_lora_conv`: `conv2`, peft's
//!   `lora.Conv2d`, r 4, alpha 8);
//! - our LoRA written in peft's format loads into peft and gives our outputs: q/v slices on a
//!   ViT, on TinyViT (per-head qkv rows, LiteMedSAM's module code), and convs of chosen stages
//!   of a ResNet (including `conv1`, which peft must not confuse with the stem).
//!
//! Tolerance: 1e-4 absolute between us and peft (float32; the logits are O(1)); 1e-5 for our
//! own write → read round trip.
use dka_baselines::lora::{ConvTarget, LoraConfig};
use dka_baselines::{io, peft, MethodConfig};
use dka_core::method::Method;
use dka_core::weights::{load_into, read_safetensors};
use dka_core::{Backbone, BackboneConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    let dir = root().join("fixtures").join(name);
    assert!(
        dir.join("model.safetensors").is_file(),
        "fixture {} is missing: run `just fixtures`",
        dir.display()
    );
    dir
}

fn base(dir: &Path) -> (nn::VarStore, Backbone) {
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    (vs, model)
}

fn logits(m: &Backbone, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward_head(&m.forward_features(x, false)).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Loads the peft-trained adapter of fixture `name` and compares with peft's outputs.
fn peft_trained(name: &str) -> LoraConfig {
    let dir = fixture(name);
    let (mut vs, mut model) = base(&dir);
    let io_t: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let saved = io::open(&dir.join("adapter")).unwrap();
    let MethodConfig::Lora(cfg) = saved.method.clone() else {
        panic!("a peft folder opens as LoRA")
    };
    let mut avs = nn::VarStore::new(Device::Cpu);
    cfg.attach(&mut model, &avs.root()).unwrap();
    io::apply(&saved, &dir, &mut avs, &mut vs, &[]).unwrap();
    let x = &io_t["input"];
    let f = tch::no_grad(|| model.forward_features(x, false).x);
    let err_f = max_diff(&f, &io_t["features"]);
    let err_l = max_diff(&logits(&model, x), &io_t["logits"]);
    eprintln!("{name}: peft-trained adapter: features {err_f:e}, logits {err_l:e}");
    assert!(
        err_f <= 1e-4 && err_l <= 1e-4,
        "{name}: features {err_f:e}, logits {err_l:e}"
    );
    // And the adapter matters: without it the outputs are the base model's.
    let base_err = max_diff(&logits(&model, &io_t["input_base"]), &io_t["logits_base"]);
    assert!(
        base_err > 1e-3,
        "{name}: the fixture's LoRA must change the outputs ({base_err:e})"
    );
    cfg
}

#[test]
fn a_peft_trained_lora_gives_peft_outputs() {
    let cfg = peft_trained("peft_lora");
    assert_eq!((cfg.r, cfg.alpha, cfg.qkv_parts.as_str()), (4, 8.0, "qkv"));
    // peft writes `target_modules` from a Python set: its order changes from one fixture
    // generation to the next, and the order does not matter.
    let mut targets = cfg.targets.clone();
    targets.sort();
    assert_eq!(targets, ["fc2", "qkv"]);
}

#[test]
fn a_peft_trained_conv_lora_gives_peft_outputs() {
    let cfg = peft_trained("peft_lora_conv");
    assert_eq!((cfg.r, cfg.alpha), (4, 8.0));
    assert_eq!(cfg.conv_targets, [ConvTarget::Conv2]);
    assert_eq!(cfg.layers, None);
}

/// Attaches `lora` to fixture `name` with deterministic non-zero tensors, writes it as peft,
/// reads it back here and has peft load it; both must reproduce our logits.
fn ours_in_peft(name: &str, lora: &LoraConfig, x: &Tensor) {
    let dir = fixture(name);
    let (_vs, mut model) = base(&dir);
    let bare = logits(&model, x);
    let avs = nn::VarStore::new(Device::Cpu);
    lora.attach(&mut model, &avs.root()).unwrap();
    let mut vars: Vec<(String, Tensor)> = avs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (_, mut t)) in vars.into_iter().enumerate() {
            t.copy_(
                &((Tensor::arange(t.numel() as i64, (Kind::Float, Device::Cpu))
                    * (0.3 + i as f64 * 0.01))
                    .sin()
                    .view(t.size().as_slice())
                    * 0.1),
            );
        }
    });
    let ours = logits(&model, x);
    let effect = max_diff(&ours, &bare);
    assert!(
        effect > 1e-3,
        "{name}: the LoRA must change the outputs ({effect:e})"
    );
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    peft::write(&adapter, lora, &avs, &model).unwrap();
    let outputs = tmp.path().join("ours.safetensors");
    Tensor::write_safetensors(&[("input", x), ("logits", &ours)], &outputs).unwrap();

    // Read back here (q/v slices come back as one whole-qkv LoRA): the same outputs.
    let saved = io::open(&adapter).unwrap();
    let (mut vs2, mut model2) = base(&dir);
    let mut avs2 = nn::VarStore::new(Device::Cpu);
    saved
        .method
        .method()
        .attach(&mut model2, &avs2.root())
        .unwrap();
    io::apply(&saved, &adapter, &mut avs2, &mut vs2, &[]).unwrap();
    let err = max_diff(&logits(&model2, x), &ours);
    assert!(err <= 1e-5, "{name}: read back: {err:e}");

    // Loaded by peft itself.
    let python = root().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(root().join("python/check_peft_adapter.py"))
        .args([&dir, &adapter, &outputs])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `just setup`)", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peft failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff: f64 = stdout
        .trim()
        .strip_prefix("max_abs_diff ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    eprintln!("{name}: ours in peft: {diff:e} (read back here: {err:e})");
    assert!(
        diff <= 1e-4,
        "{name}: peft's outputs differ from ours by {diff:e}"
    );
}

fn image(shape: [i64; 4]) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.11)
        .cos()
        .view(shape)
}

#[test]
fn our_qv_lora_written_as_peft_loads_in_peft_with_the_same_outputs() {
    let lora = LoraConfig {
        r: 2,
        alpha: 6.0,
        targets: vec!["qkv".into(), "proj".into()],
        ..Default::default()
    };
    ours_in_peft("peft_lora", &lora, &image([2, 3, 32, 32]));
}

#[test]
fn our_qv_lora_on_tinyvit_loads_in_peft_with_the_same_outputs() {
    // TinyViT's qkv rows are per head: the fused q/v LoRA must land on those rows.
    let lora = LoraConfig {
        r: 2,
        alpha: 4.0,
        targets: vec!["qkv".into(), "fc1".into()],
        ..Default::default()
    };
    ours_in_peft("tinyvit", &lora, &image([1, 3, 32, 32]));
}

#[test]
fn our_conv_lora_written_as_peft_loads_in_peft_with_the_same_outputs() {
    let lora = LoraConfig {
        r: 3,
        alpha: 6.0,
        conv_targets: vec![ConvTarget::Conv1, ConvTarget::Conv2, ConvTarget::Conv3],
        layers: Some(vec![1, 3]),
        ..Default::default()
    };
    ours_in_peft("resnet_bottleneck", &lora, &image([2, 3, 64, 48]));
    let lora = LoraConfig::default();
    ours_in_peft("resnet_bottleneck", &lora, &image([1, 3, 64, 64]));
}
