//! `dka erf` end to end on the tiny random-init ViT and synthetic images: a trained run's ERF
//! (score maps, area ratios, heatmap), a method at initialisation (identity-at-init methods
//! leave the backbone's ERF as it is), a grid's runs with `--init` (one folder per map, the
//! area-ratio table, the map grid), the redraw by `dka plots`, and the refusal of data the run
//! was not trained on.
use std::path::{Path, PathBuf};

mod common;
use common::{csv_rows, dka, ok};

fn synth(dir: &Path, seed: u64) -> String {
    common::synth(dir, 20, seed)
}

/// A small grid: Adapter and DKA at two fractions, one epoch each.
fn experiment(dir: &Path) -> PathBuf {
    let p = dir.join("erf_grid.toml");
    std::fs::write(
        &p,
        r#"
name = "erf-test"
title = "ERF test"
metric = "accuracy"
rows = "method"
columns = ["dataset", "fraction"]
cpu = true

[base]
backbone = "experiments/backbones/vit_quick.json"
img_size = 32
epochs = 1
batch_size = 16
augment = false

[grid]
method = [{ name = "adapter", dim = 4 }, { name = "dka", d_hat = 4 }, { name = "linear" }]
dataset = ["folder"]
fraction = ["50%", "100%"]
draw = [0]
"#,
    )
    .unwrap();
    p
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    tch::Tensor::read_safetensors(path).unwrap()
}

fn get(t: &[(String, tch::Tensor)], name: &str) -> tch::Tensor {
    t.iter().find(|x| x.0 == name).unwrap().1.shallow_clone()
}

#[test]
fn erf_of_runs_of_methods_at_init_and_of_a_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = synth(&t.join("synth"), 0);
    let grid = t.join("grid");
    ok(dka(&[
        "grid",
        experiment(t).to_str().unwrap(),
        "--out",
        grid.to_str().unwrap(),
        "--data",
        &data,
        "--weights",
        "none",
    ]));

    // One trained run.
    let runs: Vec<PathBuf> = std::fs::read_dir(grid.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let run = runs
        .iter()
        .find(|r| {
            std::fs::read_to_string(r.join("config.json"))
                .unwrap()
                .contains("\"dka\"")
        })
        .unwrap();
    let one = t.join("erf_run");
    let out = ok(dka(&[
        "erf",
        "--run",
        run.to_str().unwrap(),
        "--data",
        &data,
        "--images",
        "5",
        "--batch",
        "2",
        "--out",
        one.to_str().unwrap(),
    ]));
    assert!(out.contains("t = 0.2: area ratio"), "{out}");
    let s = tensors(&one.join("erf.safetensors"));
    let (sum, mean) = (get(&s, "sum"), get(&s, "mean"));
    assert_eq!(mean.size(), [32, 32]);
    // Five images (batches of 2, 2, 1), averaged.
    assert!(f64::try_from((&sum / 5.0 - &mean).abs().max()).unwrap() < 1e-12);
    assert!(
        f64::try_from(mean.min()).unwrap() >= 0.0
            && f64::try_from(mean.sum(tch::Kind::Double)).unwrap() > 0.0
    );
    let rows = csv_rows(&one.join("erf.csv"));
    let ts: Vec<&str> = rows.iter().map(|r| r["t"].as_str()).collect();
    assert_eq!(ts, ["0.2", "0.3", "0.5", "0.99"]);
    assert!(rows
        .iter()
        .all(|r| r["method"] == "dka" && r["images"] == "5"));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("erf.json")).unwrap()).unwrap();
    assert_eq!(info["images"], 5);
    assert_eq!(info["dataset"], "folder");
    let font = dka_bench::report::plots::style::font_available();
    assert_eq!(one.join("erf.png").is_file(), font);

    // Another dataset than the run's: refused.
    let other = synth(&t.join("other"), 7);
    let o = dka(&[
        "erf",
        "--run",
        run.to_str().unwrap(),
        "--data",
        &other,
        "--images",
        "2",
        "--out",
        t.join("refused").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the data this run was trained on"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // At initialisation DKA with a zero-init `Up` is the identity: the same ERF as the bare
    // backbone (linear probing attaches nothing), whose random initialisation the seed fixes.
    // (The authors' initialisation, the default, starts `Up` at std 0.01: not quite.)
    let at_init = |method: &str| {
        let dir = t.join(format!("init_{method}"));
        ok(dka(&[
            "erf",
            "--method",
            method,
            "--backbone",
            "experiments/backbones/vit_quick.json",
            "--weights",
            "none",
            "--img-size",
            "32",
            "--data",
            &data,
            "--images",
            "4",
            "--out",
            dir.to_str().unwrap(),
        ]));
        get(&tensors(&dir.join("erf.safetensors")), "mean")
    };
    let (bare, dka_init) = (
        at_init("linear"),
        at_init(r#"{"name": "dka", "d_hat": 4, "init": "zero-up"}"#),
    );
    let scale = f64::try_from(bare.abs().max()).unwrap();
    assert!(scale > 0.0);
    assert!(f64::try_from((&bare - &dka_init).abs().max()).unwrap() <= 1e-5 * scale);

    // The grid: Adapter and DKA at 50 % and 100 %, and each at initialisation.
    let set = t.join("results/erf/test");
    let out = ok(dka(&[
        "erf",
        "--grid",
        grid.to_str().unwrap(),
        "--methods",
        "adapter,dka",
        "--init",
        "--data",
        &data,
        "--images",
        "3",
        "--out",
        set.to_str().unwrap(),
    ]));
    let rows = csv_rows(&set.join("area_ratios.csv"));
    assert_eq!(rows.len(), 6 * 4, "{out}");
    let mut maps: Vec<String> = rows.iter().map(|r| r["map"].clone()).collect();
    maps.dedup();
    assert_eq!(
        maps.iter().collect::<std::collections::BTreeSet<_>>().len(),
        6,
        "{maps:?}"
    );
    for m in &maps {
        assert!(set.join(m).join("erf.safetensors").is_file(), "{m}");
    }
    assert!(set.join("adapter_init").is_dir() && set.join("dka_50pct").is_dir());
    assert!(rows.iter().all(|r| r["method"] != "linear"));
    assert_eq!(set.join("erf_grid.png").is_file(), font);
    // dka plots redraws the map grid and the grid's figure from the CSVs alone.
    if font {
        std::fs::remove_file(set.join("erf_grid.png")).unwrap();
        let out = ok(dka(&[
            "plots",
            "--results",
            t.join("results").to_str().unwrap(),
        ]));
        assert!(set.join("erf_grid.png").is_file(), "{out}");
    }
}
