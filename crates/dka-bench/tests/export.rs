//! `dka export` against the libraries that load it: for every method, on a classifier and on
//! a segmenter (tiny ViT, one epoch, random-init backbone), the `torch` export loaded by
//! `python/dka_torch.py` on timm gives dka's logits; a LoRA classifier's `peft` export loads in
//! peft and its `merged` export (and BitFit's, full fine-tuning's, linear probing's) in timm
//! alone, strictly, with the same logits. Tolerance 1e-4 (max |Δ| on dka's check batch; float
//! round-off between two implementations of the same arithmetic). Needs the pinned `.venv`
//! (`just setup`); the table is printed (`-- --nocapture`).
use std::path::{Path, PathBuf};

mod common;
use common::{dka, repo, stderr, synth};

const METHODS: [&str; 11] = [
    "full",
    "linear",
    "bitfit",
    "vpt",
    "lora",
    "adapter",
    "adaptformer",
    "convpass",
    "ciat",
    "aim",
    "dka",
];

/// Trains a one-epoch run of `method` (TOML) on `dataset`, returns its folder.
fn train(tmp: &Path, name: &str, dataset: &str, data: &str, method: &str, extra: &str) -> PathBuf {
    let cfg = tmp.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"{dataset}\"\n\
             img_size = 32\nepochs = 1\nbatch_size = 16\n\
             optimizer = {{ backbone_lr = 1e-3 }}\n{extra}\nmethod = {method}\n"
        ),
    )
    .unwrap();
    let out = tmp.join(format!("run-{name}"));
    let o = dka(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--data",
        data,
        "--weights",
        "none",
    ]);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    out
}

fn export(run: &Path, format: &str, out: &Path) {
    let o = dka(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}: {}", run.display(), stderr(&o));
    for f in ["check.safetensors", "README.md", "dka_export.json"] {
        assert!(out.join(f).is_file(), "{} lacks {f}", out.display());
    }
}

#[test]
fn exports_load_in_pytorch_peft_and_timm_with_dkas_logits() {
    let python = repo().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no {} (run `just setup`)", python.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let folder = synth(&t.join("synth"), 12, 0);
    let mni = format!("mni152={}", repo().join(".assets/mni152").display());
    let mut exports: Vec<(String, PathBuf)> = Vec::new();
    for m in METHODS {
        let method = format!("{{ name = \"{m}\" }}");
        for (task, dataset, data) in [
            ("cls", "folder", folder.as_str()),
            ("seg", "mni152", mni.as_str()),
        ] {
            let name = format!("{task}-{m}");
            let run = train(t, &name, dataset, data, &method, "");
            let out = t.join(format!("torch-{name}"));
            export(&run, "torch", &out);
            exports.push((format!("{m} {task} torch"), out));
            if task == "cls" && ["lora", "bitfit", "full", "linear"].contains(&m) {
                let out = t.join(format!("merged-{name}"));
                export(&run, "merged", &out);
                exports.push((format!("{m} {task} merged"), out));
            }
            if task == "cls" && m == "lora" {
                let out = t.join(format!("peft-{name}"));
                export(&run, "peft", &out);
                exports.push((format!("{m} {task} peft"), out));
            }
        }
    }
    // Options that change what a module computes.
    for (name, dataset, data, method, extra) in [
        (
            "dka-learnable",
            "folder",
            folder.as_str(),
            r#"{ name = "dka", learnable_kernel = { k_max = 9, tau = 1.0, init_radius = 3.0 } }"#,
            "",
        ),
        (
            "dka-branch-paper",
            "folder",
            folder.as_str(),
            r#"{ name = "dka", placement = "branch", activation = "paper", bias = true }"#,
            "",
        ),
        (
            "dka-mask-transformer",
            "mni152",
            mni.as_str(),
            r#"{ name = "dka", d_hat = 8 }"#,
            "decoder = \"mask-transformer\"",
        ),
        (
            "vpt-shallow",
            "folder",
            folder.as_str(),
            r#"{ name = "vpt", deep = false, tokens = 3 }"#,
            "",
        ),
        (
            "lora-qkv-fc2",
            "folder",
            folder.as_str(),
            r#"{ name = "lora", targets = ["qkv", "fc2"], r = 4 }"#,
            "",
        ),
        (
            "adaptformer-original",
            "folder",
            folder.as_str(),
            r#"{ name = "adaptformer", dim = 64, act = "relu", scale = 0.1 }"#,
            "",
        ),
    ] {
        let run = train(t, name, dataset, data, method, extra);
        let out = t.join(format!("torch-{name}"));
        export(&run, "torch", &out);
        exports.push((format!("{name} torch"), out));
    }
    let mut args: Vec<String> = vec!["python/dka_torch.py".into(), "check".into()];
    args.extend(exports.iter().map(|(_, d)| d.display().to_string()));
    let o = std::process::Command::new(&python)
        .args(&args)
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), exports.len(), "{stdout}\n{}", stderr(&o));
    println!("| method task format | max |Δ| against dka |\n|---|---:|");
    for ((what, _), line) in exports.iter().zip(&lines) {
        let diff: f64 = line.rsplit('\t').next().unwrap().parse().unwrap();
        println!("| {what} | {diff:.1e} |");
        assert!(diff <= 1e-4, "{what}: max |Δ| {diff}");
    }
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
}

#[test]
fn exports_that_cannot_hold_the_run_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let folder = synth(&t.join("synth"), 8, 0);
    let run = train(t, "dka", "folder", &folder, r#"{ name = "dka" }"#, "");
    for (format, says) in [
        (
            "merged",
            "do not fold into the backbone's weights; use --format torch",
        ),
        ("peft", "--format peft is for LoRA runs"),
    ] {
        let o = dka(&[
            "export",
            run.to_str().unwrap(),
            "--format",
            format,
            "--out",
            t.join(format).to_str().unwrap(),
        ]);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(says), "{format}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
}
