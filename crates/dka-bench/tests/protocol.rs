//! A grid runs only what the user meant, says exactly what it ran, and loses nothing to one
//! bad run: refusals before any work (CPU for a paper-scale profile, no weights, missing
//! datasets), run identity (weights content, settings), failed runs recorded while the rest of
//! the grid completes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{dka, metrics_of, repo, rows, stderr, table_ns, train_cpu, train_losses};

/// Writes `DIR/NAME.toml`: the quick ViT on the synthetic folder dataset at 32 px, batches of
/// 8, no augmentation, head and adapter learning rates 1e-2, plus `extra` lines.
fn quick_vit_run(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"backbone = "experiments/backbones/vit_quick.json"
dataset = "folder"
img_size = 32
batch_size = 8
augment = false
optimizer = {{ head_lr = 1e-2, adapter_lr = 1e-2 }}
{extra}
"#
        ),
    )
    .unwrap();
    cfg
}

fn synth(dir: &Path) -> String {
    common::synth(dir, 8, 0)
}

/// A small experiment (no `quick` profile: it needs --device cpu and weights like a paper grid).
fn experiment(dir: &Path, epochs: usize, methods: &str) -> PathBuf {
    let p = dir.join("exp.toml");
    std::fs::write(
        &p,
        format!(
            r#"
name = "t"
title = "T"
metric = "accuracy"
rows = "method"
columns = ["dataset"]

[base]
backbone = "experiments/backbones/vit_quick.json"
img_size = 32
epochs = {epochs}
batch_size = 8
augment = false

[grid]
method = {methods}
dataset = ["folder"]
"#
        ),
    )
    .unwrap();
    p
}

/// A weights file for the quick ViT, seeded.
fn weights(path: &Path, seed: i64) {
    tch::manual_seed(seed);
    let cfg = dka_core::BackboneConfig::from_spec(
        repo()
            .join("experiments/backbones/vit_quick.json")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = dka_core::Backbone::new(&vs.root(), &cfg).unwrap();
    vs.save(path).unwrap();
}

#[test]
fn paper_scale_grids_refuse_the_cpu_and_missing_weights_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let base = [
        "grid",
        "experiments/table2_classification.toml",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        "/nonexistent",
    ];
    // No CUDA here: `auto` lands on the CPU, which a paper-scale profile refuses.
    let run = dka(&base);
    let e = stderr(&run);
    assert!(!run.status.success());
    assert!(
        e.contains("--device cpu") && e.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{e}"
    );
    // On the CPU by choice, but without weights.
    let run = dka(&[&base[..], &["--device", "cpu"]].concat());
    let e = stderr(&run);
    assert!(!run.status.success() && e.contains("--weights none"), "{e}");
    // With `--weights none` (the random-init control) the missing datasets are named, each once.
    let run = dka(&[&base[..], &["--device", "cpu", "--weights", "none"]].concat());
    let e = stderr(&run);
    assert!(!run.status.success(), "{e}");
    assert!(e.contains("3 dataset folder(s) missing"), "{e}");
    for d in ["covid", "busi-cls", "isic2019"] {
        assert_eq!(e.matches(&format!("{d} (no folder")).count(), 1, "{e}");
    }
    assert!(!out.join("runs").exists(), "nothing ran");
}

#[test]
fn the_run_id_covers_weights_content_and_settings_and_tables_show_the_current_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let (w1, w2) = (
        tmp.path().join("w1.safetensors"),
        tmp.path().join("w2.safetensors"),
    );
    weights(&w1, 1);
    weights(&w2, 2);
    let out = tmp.path().join("out");
    let exp = experiment(tmp.path(), 1, r#"[{ name = "linear" }, { name = "dka" }]"#);
    let run = |exp: &Path, w: &Path| {
        let o = dka(&[
            "grid",
            exp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--data",
            &data,
            "--weights",
            w.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run(&exp, &w1);
    assert_eq!(rows(&out).len(), 2);
    let stdout = run(&exp, &w2);
    assert!(
        stdout.contains("2 run(s) finished now, 0 already done"),
        "{stdout}"
    );
    assert_eq!(rows(&out).len(), 4, "other weights are other runs");
    assert_eq!(
        table_ns(&out),
        ["1", "1"],
        "the table shows the current grid only"
    );
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("w2.safetensors (sha256 "), "{md}");
    assert!(
        md.contains("2 older run(s) in runs.csv are not part of this grid"),
        "{md}"
    );
    // The same weights again: nothing to do.
    let stdout = run(&exp, &w2);
    assert!(
        stdout.contains("0 run(s) finished now, 2 already done"),
        "{stdout}"
    );
    // Other settings (epochs) are other runs; the table's n stays 1.
    let exp2 = experiment(tmp.path(), 2, r#"[{ name = "linear" }, { name = "dka" }]"#);
    run(&exp2, &w2);
    assert_eq!(rows(&out).len(), 6);
    assert_eq!(table_ns(&out), ["1", "1"]);
}

#[test]
fn a_diverging_run_is_a_failed_row_and_the_rest_of_the_grid_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let out = tmp.path().join("out");
    // `with` sets a learning rate that diverges for one axis value only.
    let exp = experiment(
        tmp.path(),
        3,
        r#"[{ name = "linear", label = "diverges", with = { "optimizer.head_lr" = 1e38, "optimizer.kind" = "sgd", "optimizer.momentum" = 0.0 } }, { name = "dka" }]"#,
    );
    let o = dka(&[
        "grid",
        exp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--data",
        &data,
        "--weights",
        "none",
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success(),
        "a failed run is reported through the exit status"
    );
    assert!(
        e.contains("1 run(s) of t failed") && e.contains("--retry-failed"),
        "{e}"
    );
    let r = rows(&out);
    let by = |label: &str| r.iter().find(|x| x["method"] == label).unwrap();
    assert_eq!(by("diverges")["status"], "failed");
    assert!(
        by("diverges")["error"].contains("the loss is"),
        "{:?}",
        by("diverges")
    );
    assert_eq!(by("dka")["status"], "ok");
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("| diverges | – (1 failed) |"), "{md}");
    assert!(md.contains("| dka | "), "{md}");
    // A restart does not retry it unless asked.
    let o = dka(&[
        "grid",
        exp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--data",
        &data,
        "--weights",
        "none",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("0 run(s) finished now, 1 already done, 1 failed"));
}

#[test]
fn gpu_check_runs_its_cpu_part_and_writes_its_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("check.csv");
    let o = dka(&[
        "gpu-check",
        "--out",
        out.to_str().unwrap(),
        "--cpu-steps",
        "--backbone",
        "experiments/backbones/vit_quick.json",
        "--batch",
        "2",
        "--steps",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(
        csv.starts_with("section,item,device,precision,value,unit,tolerance,ok,note\n"),
        "{csv}"
    );
    assert!(csv.contains("device,cuda usable,,,false"), "{csv}");
    assert!(csv.contains("forward,vit_layerscale,cpu,fp32,"), "{csv}");
    for m in [
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
    ] {
        assert!(
            csv.contains(&format!("train-step,vit_quick.json {m} batch 2,cpu,fp32,")),
            "{m}: {csv}"
        );
    }
    assert!(csv.contains("grid,"), "{csv}");
    // Every exact DKA conv path timed on the smallest shape, and the fixed rule's choice.
    for p in ["Direct", "Fft", "FftToeplitz", "Toeplitz"] {
        assert!(
            csv.contains(&format!("dka-conv,vit-b16 224 b8 d16 14x14 {p},cpu,fp32,")),
            "{p}: {csv}"
        );
    }
    assert!(
        csv.contains("dka-conv,vit-b16 224 b8 d16 14x14 auto rule,cpu,fp32,FftToeplitz,"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .filter(|l| !l.starts_with("device,"))
            .all(|l| !l.contains(",false,")),
        "every check passes: {csv}"
    );
    assert!(out.with_extension("meta.json").is_file());
}

#[test]
fn the_best_val_adapter_on_disk_reproduces_the_selected_epochs_test_score() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        r#"
backbone = "experiments/backbones/vit_quick.json"
dataset = "folder"
img_size = 32
epochs = 6
batch_size = 8
val_fraction = 0.25
selection = "best-val"
test_every = 1
method = { name = "dka", d_hat = 8 }
optimizer = { head_lr = 1e-2, adapter_lr = 1e-2 }
"#,
    )
    .unwrap();
    let out = tmp.path().join("run");
    let args = ["--device", "cpu", "--data", &data];
    let o = dka(&[
        &[
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--weights",
            "none",
        ][..],
        &args,
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let trained = metrics_of(&o);
    let e = dka(&[&["eval", out.to_str().unwrap()][..], &args].concat());
    assert!(e.status.success(), "{}", stderr(&e));
    let evaluated = metrics_of(&e);
    for m in ["accuracy", "balanced_accuracy", "macro_f1", "auc"] {
        assert!(
            (trained[m] - evaluated[m]).abs() < 1e-6,
            "{m}: trained {} vs re-evaluated {}",
            trained[m],
            evaluated[m]
        );
    }
    // metrics.csv has the test score of every epoch (test_every = 1): the saved tensors are the
    // selected epoch's, whose row matches.
    let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut r = csv::Reader::from_reader(rows.as_bytes());
    let h = r.headers().unwrap().clone();
    let col = h.iter().position(|c| c == "test_accuracy").unwrap();
    let per_epoch: Vec<f64> = r
        .records()
        .map(|x| x.unwrap()[col].parse().unwrap())
        .collect();
    let sel = trained["selected_epoch"] as usize;
    assert!(
        (per_epoch[sel] - evaluated["accuracy"]).abs() < 1e-6,
        "{per_epoch:?} epoch {sel}"
    );
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    assert!(
        log.contains("the test set was evaluated 6 time(s)"),
        "{log}"
    );
}

#[test]
fn plan_lists_the_runs_to_do_and_estimates_their_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let out = tmp.path().join("out");
    let exp = experiment(tmp.path(), 1, r#"[{ name = "linear" }, { name = "dka" }]"#);
    let args = |cmd: &str| -> Vec<String> {
        [
            cmd,
            exp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--data",
            &data,
            "--weights",
            "none",
        ]
        .map(String::from)
        .to_vec()
    };
    let plan = |cmd: &str| {
        let mut a = args(cmd);
        if cmd == "grid" {
            a.push("--plan".into());
        }
        let o = dka(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let p = plan("plan");
    assert!(p.contains("2 run(s) in all, 0 done, 2 to do: about"), "{p}");
    assert!(
        p.contains("floating-point work"),
        "ViT FLOPs are counted: {p}"
    );
    assert!(out.join("plan.csv").is_file());
    assert!(!out.join("runs").exists(), "planning runs nothing");
    let o = dka(&args("grid").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let p = plan("grid");
    assert!(p.contains("2 run(s) in all, 2 done, 0 to do"), "{p}");
}

#[test]
fn checkpointed_blocks_train_to_the_same_numbers_and_are_a_different_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let run = |checkpoint: bool| -> (BTreeMap<String, f64>, String) {
        let cfg = quick_vit_run(
            tmp.path(),
            &format!("run-{checkpoint}"),
            &format!(
                "epochs = 4\ncheckpoint_blocks = {checkpoint}\n\
                 method = {{ name = \"dka\", d_hat = 8, dropout = 0.0 }}"
            ),
        );
        let out = tmp.path().join(format!("out-{checkpoint}"));
        let o = train_cpu(&cfg, &out, &data);
        assert!(o.status.success(), "{}", stderr(&o));
        let config = std::fs::read_to_string(out.join("config.json")).unwrap();
        let mut m = metrics_of(&o);
        let last = *train_losses(&out).last().expect("one loss per epoch");
        m.insert("last_train_loss".into(), last);
        (m, config)
    };
    let (plain, plain_cfg) = run(false);
    let (ckpt, ckpt_cfg) = run(true);
    assert!(
        ckpt_cfg.contains("\"checkpoint_blocks\": true"),
        "{ckpt_cfg}"
    );
    assert!(
        plain_cfg.contains("\"checkpoint_blocks\": false"),
        "{plain_cfg}"
    );
    // Without dropout the gradients are the same up to the order of float sums: 4 epochs of
    // Adam end at the same losses and test metrics to well within one test sample.
    for m in ["accuracy", "macro_f1", "last_train_loss"] {
        let (a, b) = (plain[m], ckpt[m]);
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "{m}: plain {a}, checkpointed {b}"
        );
    }
}

#[test]
fn bf16_on_the_cpu_is_autocast_close_to_fp32_and_fp16_is_refused_there() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let run = |precision: &str| -> (std::process::Output, PathBuf) {
        let cfg = quick_vit_run(
            tmp.path(),
            &format!("run-{precision}"),
            &format!("epochs = 3\nprecision = \"{precision}\"\nmethod = {{ name = \"adapter\" }}"),
        );
        let out = tmp.path().join(format!("out-{precision}"));
        let o = train_cpu(&cfg, &out, &data);
        (o, out)
    };
    let (o, fp32) = run("fp32");
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, bf16) = run("bf16");
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(bf16.join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
    // Autocast is really on (bf16 matmuls round differently), and the run is the same run up to
    // that rounding: the same data, init and steps.
    let (a, b) = (train_losses(&fp32), train_losses(&bf16));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).any(|(x, y)| x != y),
        "bf16 losses equal fp32's: {a:?}"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 0.05 * x.abs().max(0.1),
            "fp32 {a:?} against bf16 {b:?}"
        );
    }
    let (o, _) = run("fp16");
    assert!(!o.status.success(), "fp16 ran on the CPU");
    assert!(stderr(&o).contains("fp16 needs CUDA"), "{}", stderr(&o));
}
