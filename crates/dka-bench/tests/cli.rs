//! The `dka` binary on good and bad input: bad input is one line on stderr naming the key or
//! shape, a non-zero exit, and never a panic. Uses the timm fixtures (`just fixtures`).
use std::path::PathBuf;
use std::process::{Command, Output};
use tch::Tensor;

mod common;
use common::fixture;

fn dka(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn features(backbone: &PathBuf, weights: &PathBuf, input: &PathBuf, output: &PathBuf) -> Output {
    dka(&[
        "features",
        "--backbone",
        backbone.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--device",
        "cpu",
    ])
}

/// A failed run: non-zero exit, one `error:` line that contains `needle`, no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "panic: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "'{needle}' not in: {stderr}"
    );
}

#[test]
fn features_of_a_fixture_equal_timm() {
    let d = fixture("samvit");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let run = features(
        &d.join("config.json"),
        &d.join("model.safetensors"),
        &d.join("io.safetensors"),
        &out,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours: std::collections::HashMap<_, _> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    let theirs: std::collections::HashMap<_, _> =
        Tensor::read_safetensors(d.join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for k in ["features", "logits"] {
        let err = (&ours[k] - &theirs[k]).abs().max().double_value(&[]);
        assert!(err <= 1e-4, "{k}: {err}");
    }
}

#[test]
fn weights_of_the_wrong_shape_name_the_tensor() {
    let vit = fixture("vit_layerscale");
    let other = fixture("vit_resized"); // 4 heads instead of 3: same names, other MLP width
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let run = features(
        &vit.join("config.json"),
        &other.join("model.safetensors"),
        &vit.join("io.safetensors"),
        &out,
    );
    assert_clean_failure(
        &run,
        "blocks.0.mlp.fc1.weight: model [96, 48], file [192, 48]",
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn weights_with_missing_keys_name_them() {
    let vit = fixture("vit_layerscale");
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("partial.safetensors");
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(vit.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "blocks.1.norm2.bias")
        .collect();
    Tensor::write_safetensors(&kept, &partial).unwrap();
    let run = features(
        &vit.join("config.json"),
        &partial,
        &vit.join("io.safetensors"),
        &tmp.path().join("o.safetensors"),
    );
    assert_clean_failure(&run, "1 missing from the file (blocks.1.norm2.bias)");
}

#[test]
fn an_input_of_the_wrong_rank_names_its_shape() {
    let vit = fixture("vit_layerscale");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    Tensor::write_safetensors(
        &[(
            "input",
            Tensor::zeros([3, 32, 32], (tch::Kind::Float, tch::Device::Cpu)),
        )],
        &input,
    )
    .unwrap();
    let run = features(
        &vit.join("config.json"),
        &vit.join("model.safetensors"),
        &input,
        &tmp.path().join("o.safetensors"),
    );
    assert_clean_failure(&run, "shape [3, 32, 32]");
}

#[test]
fn an_unknown_backbone_lists_the_presets() {
    let vit = fixture("vit_layerscale");
    let w = vit.join("model.safetensors");
    let run = features(&PathBuf::from("vit_huge_nonsense"), &w, &w, &w);
    assert_clean_failure(&run, "vit_base_patch16_224");
}

#[test]
fn info_reports_device_threads_and_cuda() {
    let run = dka(&["info"]);
    let s = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success());
    for key in [
        "device:",
        "cpu threads (libtorch):",
        "libtorch built against: 2.11.0",
        "libtorch_cuda loaded:",
        "cuda usable:",
    ] {
        assert!(s.contains(key), "'{key}' missing from:\n{s}");
    }
}

#[test]
fn info_speed_measures_gemm_and_a_tiny_step() {
    let run = dka(&["info", "--speed", "--device", "cpu"]);
    let s = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line = s
        .lines()
        .find_map(|l| l.strip_prefix("speed now: "))
        .unwrap_or_else(|| panic!("no speed line in:\n{s}"));
    // "GEMM 1024x1024 fp32 <n> GFLOP/s, bf16 <n> GFLOP/s|not native; a tiny step (...) <n> µs"
    let number_before = |unit: &str| -> f64 {
        let head = &line[..line
            .find(unit)
            .unwrap_or_else(|| panic!("no {unit}: {line}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(number_before(" GFLOP/s") > 0.0, "{line}");
    assert!(number_before(" µs") > 0.0, "{line}");
    assert!(line.contains("bf16 "), "{line}");
}

#[test]
fn features_with_a_peft_adapter_equal_peft() {
    let d = fixture("peft_lora");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let run = dka(&[
        "features",
        "--backbone",
        d.join("config.json").to_str().unwrap(),
        "--weights",
        d.join("model.safetensors").to_str().unwrap(),
        "--input",
        d.join("io.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--adapter",
        d.join("adapter").to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours: std::collections::HashMap<_, _> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    let peft: std::collections::HashMap<_, _> = Tensor::read_safetensors(d.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let err = (&ours["logits"] - &peft["logits"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(err <= 1e-4, "logits differ from peft's by {err:e}");
}

#[test]
fn data_inspect_writes_a_manifest_for_the_registry_mri() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.assets/mni152");
    assert!(
        root.is_dir(),
        "{} is missing: run `just assets`",
        root.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.json");
    let run = dka(&[
        "data",
        "inspect",
        "--dataset",
        "mni152",
        "--root",
        root.to_str().unwrap(),
        "--fraction",
        "10%",
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("train") && stdout.contains("test"),
        "{stdout}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert!(m.to_string().contains("sha256"), "manifest without hashes");
}

#[test]
fn data_inspect_on_a_missing_folder_is_one_clear_line() {
    let run = dka(&[
        "data",
        "inspect",
        "--dataset",
        "busi-cls",
        "--root",
        "/nonexistent/Dataset_BUSI_with_GT",
    ]);
    assert_clean_failure(&run, "/nonexistent/Dataset_BUSI_with_GT");
}

#[test]
fn params_counts_every_method() {
    let run = dka(&[
        "params",
        "--backbone",
        "vit_tiny_patch16_224",
        "--num-classes",
        "2",
    ]);
    let s = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for m in [
        "full",
        "linear",
        "bitfit",
        "vpt-deep",
        "lora",
        "adapter",
        "adaptformer",
        "convpass",
        "ciat",
        "aim",
        "dka",
    ] {
        assert!(s.lines().any(|l| l.starts_with(m)), "{m} missing:\n{s}");
    }
    // Linear probing on ViT-Ti: a 192 x 2 head with bias.
    assert!(
        s.lines()
            .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["linear", "386"]),
        "{s}"
    );
}
