//! The long-range task (`dka data synth --task long-range`): the class is the colour 10
//! patches right of a marker on a 16 × 16 token grid. DKA with its 51 × 51 kernel learns it;
//! DKA with only its 5 × 5 kernel (reach 2 per application, 8 in the 2-block backbone) cannot
//! and stays at chance. One seed of `experiments/long_range.toml` (its seed 0, which takes off
//! within the 30 epochs; `just long-range` runs three seeds of four variants).
use std::path::Path;

mod common;
use common::{dka, metrics_of, ok, repo, stderr};

fn train(t: &Path, data: &Path, branches: &str) -> f64 {
    let cfg = t.join(format!("{branches}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "backbone = \"experiments/backbones/vit_long_range.json\"\ndataset = \"folder\"\n\
             img_size = 128\nepochs = 30\nbatch_size = 16\naugment = false\nseed = 0\n\
             optimizer = {{ head_lr = 1e-2, adapter_lr = 1e-2 }}\n\
             method = {{ name = \"dka\", branches = \"{branches}\" }}\n"
        ),
    )
    .unwrap();
    let o = dka(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        t.join(branches).to_str().unwrap(),
        "--data",
        &format!("folder={}", data.display()),
        "--device",
        "cpu",
        "--weights",
        "none",
        "--no-tensorboard",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    metrics_of(&o)["accuracy"]
}

#[test]
fn only_the_large_kernel_reaches_the_long_range_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(dka(&[
        "data",
        "synth",
        "--task",
        "long-range",
        "--out",
        data.to_str().unwrap(),
        "--per-class",
        "100",
    ]));
    assert!(repo()
        .join("experiments/backbones/vit_long_range.json")
        .is_file());
    let both = train(tmp.path(), &data, "both");
    let small = train(tmp.path(), &data, "small");
    eprintln!("long-range accuracy: DKA {both:.3}, small kernel only {small:.3} (chance 0.333)");
    assert!(both >= 0.9, "DKA should learn the task: {both}");
    assert!(
        small <= 0.5,
        "a 5x5 kernel cannot reach the target: {small}"
    );
}
