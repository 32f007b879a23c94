//! `dka inspect` on trained runs (tiny ViT, random init, the embedded synthetic images): every
//! module application measured on test images, DKA's branch norms, the large kernels' energy
//! beyond radius 2 at initialisation and trained; a grid's runs in one set of files.
use std::path::Path;

mod common;
use common::{csv_rows, dka, ok};

#[test]
fn inspect_measures_modules_branches_and_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = common::shared_synthetic();
    for m in ["dka", "adapter"] {
        let cfg = t.join(format!("{m}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"folder\"\n\
                 img_size = 32\nepochs = 3\nbatch_size = 16\naugment = false\n\
                 method = {{ name = \"{m}\" }}\n"
            ),
        )
        .unwrap();
        ok(dka(&[
            "train",
            cfg.to_str().unwrap(),
            "--out",
            t.join(m).to_str().unwrap(),
            "--data",
            &data,
            "--device",
            "cpu",
            "--weights",
            "none",
        ]));
    }
    let out = t.join("inspect");
    let o = ok(dka(&[
        "inspect",
        t.join("dka").to_str().unwrap(),
        t.join("adapter").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data",
        &data,
        "--device",
        "cpu",
        "--images",
        "8",
    ]));
    assert!(o.contains("large kernel energy beyond radius 2"), "{o}");
    let modules = csv_rows(&out.join("modules.csv"));
    let of = |m: &str| {
        modules
            .iter()
            .filter(|r| r["method"] == m)
            .collect::<Vec<_>>()
    };
    // vit_quick: 2 blocks; DKA ("mona") runs one module after the attention and one after the
    // MLP in each block; every application is a row.
    assert_eq!(of("dka").len(), 4, "{modules:?}");
    assert!(!of("adapter").is_empty());
    for r in &modules {
        let c: f64 = r["change_ratio"].parse().unwrap();
        assert!(c.is_finite() && c > 0.0, "{r:?}");
    }
    for r in of("dka") {
        let (l, s): (f64, f64) = (
            r["large_norm"].parse().unwrap(),
            r["small_norm"].parse().unwrap(),
        );
        let ratio: f64 = r["large_over_small"].parse().unwrap();
        assert!(
            l > 0.0 && s > 0.0 && (ratio - l / s).abs() < 1e-4 * ratio.max(1.0),
            "{r:?}"
        );
    }
    assert!(of("adapter").iter().all(|r| r["large_norm"].is_empty()));
    let kernels = csv_rows(&out.join("kernels.csv"));
    assert_eq!(kernels.len(), 2, "one row per DKA module: {kernels:?}");
    let mut moved = false;
    for k in &kernels {
        assert_eq!(k["kernel"], "51x51");
        for c in ["energy_beyond_r2_init", "energy_beyond_r2_trained"] {
            let v: f64 = k[c].parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k:?}");
        }
        moved |= k["energy_beyond_r2_init"] != k["energy_beyond_r2_trained"];
    }
    assert!(moved, "training changed some large kernel: {kernels:?}");
    assert!(out.join("summary.txt").is_file());
}

/// A grid whose `method` axis carries labels: `method` is the method's name, `method_label` the
/// grid's label, and no column name repeats (pandas would rename the second).
#[test]
fn a_grids_method_labels_have_their_own_column() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let exp = t.join("labels.toml");
    std::fs::write(
        &exp,
        "name = \"labels\"\ntitle = \"t\"\nmetric = \"accuracy\"\nrows = \"method\"\n\
         columns = [\"draw\"]\n\n[base]\nbackbone = \"experiments/backbones/vit_quick.json\"\n\
         dataset = \"folder\"\nimg_size = 32\nbatch_size = 16\naugment = false\nepochs = 1\n\n\
         [grid]\nmethod = [{ name = \"dka\", label = \"DKA, large only\", branches = \"large\" }, \
         { name = \"adapter\" }]\ndraw = [0]\n",
    )
    .unwrap();
    let data = common::shared_synthetic();
    let grid = t.join("grid");
    ok(dka(&[
        "grid",
        exp.to_str().unwrap(),
        "--out",
        grid.to_str().unwrap(),
        "--device",
        "cpu",
        "--weights",
        "none",
        "--data",
        &data,
    ]));
    // `dka inspect GRID ARGS --out OUT` on 4 test images.
    let inspect = |extra: &[&str], out: &Path| {
        let mut args = vec!["inspect", grid.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = out.to_str().unwrap();
        args.extend([
            "--out", out, "--data", &data, "--device", "cpu", "--images", "4",
        ]);
        ok(dka(&args));
    };
    inspect(&[], &grid.join("inspect"));
    let modules = csv_rows(&grid.join("inspect/modules.csv"));
    let labels: std::collections::BTreeSet<(String, String)> = modules
        .iter()
        .map(|r| (r["method"].clone(), r["method_label"].clone()))
        .collect();
    assert!(
        labels.contains(&("dka".to_string(), "DKA, large only".to_string())),
        "{labels:?}"
    );
    let kernels = csv_rows(&grid.join("inspect/kernels.csv"));
    assert!(kernels
        .iter()
        .all(|k| k["method_label"] == "DKA, large only"));
    // --where keeps a grid's matching runs only.
    let only = t.join("only");
    inspect(&["--where", "method=adapter", "--where", "draw=0"], &only);
    let modules = csv_rows(&only.join("modules.csv"));
    assert!(!modules.is_empty() && modules.iter().all(|r| r["method"] == "adapter"));
}
