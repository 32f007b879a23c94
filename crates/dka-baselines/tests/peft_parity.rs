//! LoRA interop with peft (0.21.2, pinned in .venv):
//! - an adapter that peft trained on a timm ViT (fixture `peft_lora`: whole `qkv` and `fc2`,
//!   r 4, alpha 8, random non-zero B) loads through our peft reader and gives peft's outputs;
//! - our q/v-slice LoRA written in peft's format loads into peft and gives our outputs.
//! Tolerance 1e-4 absolute (float32).
use dka_baselines::{io, peft, MethodConfig};
use dka_core::weights::{load_into, read_safetensors};
use dka_core::{Backbone, BackboneConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::nn;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    let dir = root().join("fixtures/peft_lora");
    assert!(
        dir.join("adapter/adapter_config.json").is_file(),
        "fixture {} is missing: run `just fixtures`",
        dir.display()
    );
    dir
}

fn base(dir: &PathBuf) -> (nn::VarStore, Backbone, BackboneConfig) {
    let cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    load_into(&mut vs, &dir.join("model.safetensors"), cfg.head_prefix()).unwrap();
    (vs, model, cfg)
}

fn logits(m: &Backbone, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward_head(&m.forward_features(x, false)).unwrap())
}

#[test]
fn a_peft_trained_lora_gives_peft_outputs() {
    let dir = fixture();
    let (mut vs, mut model, _) = base(&dir);
    let io_t: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let saved = io::open(&dir.join("adapter")).unwrap();
    let MethodConfig::Lora(cfg) = &saved.method else {
        panic!("a peft folder opens as LoRA")
    };
    assert_eq!((cfg.r, cfg.alpha, cfg.qkv_parts.as_str()), (4, 8.0, "qkv"));
    let mut avs = nn::VarStore::new(Device::Cpu);
    saved
        .method
        .method()
        .attach(&mut model, &avs.root())
        .unwrap();
    io::apply(&saved, &dir, &mut avs, &mut vs, &[]).unwrap();
    let x = &io_t["input"];
    let f = tch::no_grad(|| model.forward_features(x, false).x);
    let err_f = (&f - &io_t["features"]).abs().max().double_value(&[]);
    let err_l = (logits(&model, x) - &io_t["logits"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        err_f <= 1e-4 && err_l <= 1e-4,
        "features {err_f:e}, logits {err_l:e}"
    );
    // And the adapter matters: without it the outputs are the base model's.
    let base_err = (logits(&model, &io_t["input_base"]) - &io_t["logits_base"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        base_err > 1e-3,
        "the fixture's LoRA must change the outputs ({base_err:e})"
    );
}

#[test]
fn our_qv_lora_written_as_peft_loads_in_peft_with_the_same_outputs() {
    let dir = fixture();
    let (_vs, mut model, cfg) = base(&dir);
    let BackboneConfig::Vit(vit) = &cfg else {
        unreachable!()
    };
    let lora = dka_baselines::lora::LoraConfig {
        r: 2,
        alpha: 6.0,
        targets: vec!["qkv".into(), "proj".into()],
        ..Default::default()
    };
    let avs = nn::VarStore::new(Device::Cpu);
    use dka_core::method::Method;
    lora.attach(&mut model, &avs.root()).unwrap();
    tch::no_grad(|| {
        for (i, (_, mut t)) in avs.variables().into_iter().enumerate() {
            t.copy_(
                &((Tensor::arange(t.numel() as i64, (Kind::Float, Device::Cpu))
                    * (0.3 + i as f64 * 0.01))
                    .sin()
                    .view(t.size().as_slice())
                    * 0.1),
            );
        }
    });
    let x = (Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu)) * 0.11)
        .cos()
        .view([2, 3, 32, 32]);
    let ours = logits(&model, &x);
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    peft::write(&adapter, &lora, &avs, vit.depth as usize).unwrap();
    let outputs = tmp.path().join("ours.safetensors");
    Tensor::write_safetensors(&[("input", &x), ("logits", &ours)], &outputs).unwrap();

    // Read back here: a whole-qkv LoRA of rank 2r with the same outputs.
    let saved = io::open(&adapter).unwrap();
    let (mut vs2, mut model2, _) = base(&dir);
    let mut avs2 = nn::VarStore::new(Device::Cpu);
    saved
        .method
        .method()
        .attach(&mut model2, &avs2.root())
        .unwrap();
    io::apply(&saved, &adapter, &mut avs2, &mut vs2, &[]).unwrap();
    let err = (logits(&model2, &x) - &ours).abs().max().double_value(&[]);
    assert!(err <= 1e-5, "read back: {err:e}");

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
    assert!(diff <= 1e-4, "peft's outputs differ from ours by {diff:e}");
}
