//! Training you can watch, continue and start from (tiny ViT, random init, the embedded
//! synthetic images): one info line per epoch off a terminal, metrics.csv's learning rates and
//! evaluation losses, hparams.yaml, result.json, curves.png, TensorBoard events read back by
//! TensorBoard's own `EventAccumulator` (pinned `.venv`); `--continue` computes exactly what one
//! longer run computes (constant schedule, CPU: same losses, byte-identical tensors); a warm
//! start evaluated before its first step gives the source run's test metrics exactly; a grid
//! whose epochs grew continues its finished runs; `dka train` refuses a run without weights;
//! every example config in experiments/examples/ checks.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{ok, repo, stderr};

/// `dka ARGS` at the default log level (info), as a user sees it.
fn dka_info(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(args)
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn synthetic() -> String {
    common::shared_synthetic()
}

/// A quick run config with `extra` lines.
fn config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"folder\"\n\
             img_size = 32\nbatch_size = 16\naugment = false\nmethod = {{ name = \"dka\" }}\n{extra}\n"
        ),
    )
    .unwrap();
    p
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let (c, o, d) = (
        cfg.display().to_string(),
        out.display().to_string(),
        synthetic(),
    );
    let mut args = vec![
        "train",
        &c,
        "--out",
        &o,
        "--data",
        &d,
        "--device",
        "cpu",
        "--weights",
        "none",
    ];
    args.extend_from_slice(extra);
    dka_info(&args)
}

fn column(path: &Path, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let i = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("{} has no column {name}", path.display()));
    r.records().map(|x| x.unwrap()[i].to_string()).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_run_reports_each_epoch_in_its_log_csv_tensorboard_and_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("quick");
    let o = train(&repo().join("experiments/examples/quick.toml"), &run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Off a terminal: one plain line per epoch on stderr, no progress bar.
    let err = stderr(&o);
    let epoch_lines: Vec<&str> = err.lines().filter(|l| l.contains(": epoch ")).collect();
    assert_eq!(epoch_lines.len(), 5, "{err}");
    for (k, l) in epoch_lines.iter().enumerate() {
        assert!(l.contains(&format!("epoch {}/5: train loss", k + 1)), "{l}");
        assert!(
            l.contains("val loss") && l.contains("lr ") && l.contains("images/s"),
            "{l}"
        );
    }
    assert!(
        !err.contains('\r') && !err.contains('\x1b'),
        "no bar, no colour: {err:?}"
    );
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert_eq!(log.lines().filter(|l| l.starts_with("epoch ")).count(), 5);

    let metrics = run.join("metrics.csv");
    let header = std::fs::read_to_string(&metrics).unwrap();
    let header = header.lines().next().unwrap();
    for c in [
        "lr_head",
        "lr_adapter",
        "lr_backbone",
        "val_loss",
        "test_loss",
        "images_per_s",
    ] {
        assert!(header.split(',').any(|h| h == c), "{c} in {header}");
    }
    assert!(column(&metrics, "lr_adapter")
        .iter()
        .all(|v| v == "1.000000e-3"));
    assert!(column(&metrics, "lr_backbone").iter().all(String::is_empty));
    assert!(column(&metrics, "val_loss").iter().all(|v| !v.is_empty()));
    let hp = std::fs::read_to_string(run.join("hparams.yaml")).unwrap();
    assert!(hp.contains("\nepochs: 5\n") && hp.contains("\noptimizer.adapter_lr: 0.001\n"));
    assert_eq!(json(&run.join("result.json"))["status"], "ok");
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file() {
        assert!(
            run.join("curves.png").is_file(),
            "dka train draws the curves"
        );
        std::fs::remove_file(run.join("curves.png")).unwrap();
        ok(common::dka(&["plots", "--run", run.to_str().unwrap()]));
        assert!(
            run.join("curves.png").is_file(),
            "dka plots --run draws them"
        );
    }

    // TensorBoard's own reader.
    let python = repo().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped the TensorBoard check: no .venv (run `just setup`)");
        return;
    }
    let code = format!(
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
         ea = EventAccumulator({:?}); ea.Reload()\n\
         print(' '.join(sorted(ea.Tags()['scalars'])))\n\
         for tag in ['loss/train', 'loss/val', 'lr/adapter', 'test/accuracy']:\n\
         \x20   print(tag, ' '.join('%d:%r' % (e.step, e.value) for e in ea.Scalars(tag)))\n",
        run.display().to_string()
    );
    let o = Command::new(&python).args(["-c", &code]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let series = |tag: &str| -> Vec<(usize, f64)> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("no {tag} in {out}"))
            .split(' ')
            .map(|p| {
                let (s, v) = p.split_once(':').unwrap();
                (s.parse().unwrap(), v.parse().unwrap())
            })
            .collect()
    };
    for (tag, col) in [
        ("loss/train", "train_loss"),
        ("loss/val", "val_loss"),
        ("lr/adapter", "lr_adapter"),
        ("test/accuracy", "test_accuracy"),
    ] {
        let tb = series(tag);
        let csv: Vec<f64> = column(&metrics, col)
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(tb.len(), csv.len(), "{tag}: one value per epoch");
        for (k, ((step, v), c)) in tb.iter().zip(&csv).enumerate() {
            assert_eq!(*step, k);
            // float32 in the event file, six decimals in the CSV.
            assert!(
                (v - c).abs() <= 1e-6 + 1e-6 * c.abs(),
                "{tag} epoch {k}: {v} vs {c}"
            );
        }
    }
    eprintln!("TensorBoard read: {}", out.lines().next().unwrap_or(""));
}

#[test]
fn continuing_equals_one_longer_run_and_a_warm_start_starts_where_its_source_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cfg = config(t, "c", "epochs = 2\nschedule_note = 0");
    // (an unknown field is refused: the config must be exact)
    let o = train(&cfg, &t.join("x"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("unknown field"));
    let cfg = config(
        t,
        "c",
        "epochs = 2\noptimizer = { schedule = \"constant\" }",
    );
    let (a, b) = (t.join("a"), t.join("b"));
    let o = train(&cfg, &a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    // Another number of epochs without --continue is refused in one line.
    let o = train(&cfg, &a, &["--epochs", "4"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pass --continue"), "{}", stderr(&o));
    let o = train(&cfg, &a, &["--continue", "--epochs", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("continuing a 2-epoch run"),
        "{}",
        stderr(&o)
    );
    let o = train(&cfg, &b, &["--epochs", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cont = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert_eq!(cont.lines().count(), 5, "header and 4 epochs");
    for (k, (x, y)) in first.lines().zip(cont.lines()).enumerate() {
        assert_eq!(x, y, "row {k} stays as it was");
    }
    assert_eq!(
        column(&a.join("metrics.csv"), "train_loss"),
        column(&b.join("metrics.csv"), "train_loss"),
        "a 2+2-epoch run trains as a 4-epoch run"
    );
    assert_eq!(
        std::fs::read(a.join("adapter/adapter.safetensors")).unwrap(),
        std::fs::read(b.join("adapter/adapter.safetensors")).unwrap(),
        "the same tensors, bit for bit"
    );
    assert_eq!(
        json(&a.join("result.json"))["metrics"],
        json(&b.join("result.json"))["metrics"]
    );

    // Warm start, evaluated before any step (epochs = 0): the source's final test metrics.
    // (Same seed, so the random-init backbone is the source's too.)
    let w = t.join("w");
    let o = train(
        &cfg,
        &w,
        &["--init-from", a.to_str().unwrap(), "--epochs", "0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (src, warm) = (json(&a.join("result.json")), json(&w.join("result.json")));
    for m in ["accuracy", "balanced_accuracy", "macro_f1", "auc"] {
        assert_eq!(src["metrics"][m], warm["metrics"][m], "{m}");
    }
    // Another method, or another shape, is named in one line.
    let lora = config(t, "l", "epochs = 1\nmethod = { name = \"lora\" }");
    let lora =
        std::fs::read_to_string(&lora)
            .unwrap()
            .replacen("method = { name = \"dka\" }\n", "", 1);
    std::fs::write(t.join("l.toml"), lora).unwrap();
    let o = train(
        &t.join("l.toml"),
        &t.join("wl"),
        &["--init-from", a.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("saved by a dka run; this run is lora"),
        "{}",
        stderr(&o)
    );
    assert!(!t.join("wl").exists(), "nothing left behind");
    let d8 = config(t, "d8", "epochs = 1");
    let d8text = std::fs::read_to_string(&d8)
        .unwrap()
        .replace("{ name = \"dka\" }", "{ name = \"dka\", d_hat = 8 }");
    std::fs::write(&d8, d8text).unwrap();
    let o = train(&d8, &t.join("w8"), &["--init-from", a.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("do not fit") && err.contains("[8, 32]") && err.lines().count() == 1,
        "{err}"
    );

    // Continuing what has no saved state, and training without weights, are refused.
    let o = train(&cfg, &t.join("none"), &["--continue", "--epochs", "3"]);
    assert!(
        stderr(&o).contains("no saved state to continue"),
        "{}",
        stderr(&o)
    );
    let o = dka_info(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        t.join("nw").to_str().unwrap(),
        "--data",
        &synthetic(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no backbone weights: pass --weights FILE.safetensors")
            && err.contains("--weights none"),
        "{err}"
    );
    eprintln!("refusal: {}", err.trim());
}

/// A grid's runs, finished with 2 epochs, continue when the experiment asks for 4; the
/// continued runs give what a fresh 4-epoch grid gives (constant schedule).
#[test]
fn a_grid_whose_epochs_grew_continues_its_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let exp = |epochs: usize| {
        let p = t.join(format!("exp{epochs}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"grow\"\ntitle = \"t\"\nmetric = \"accuracy\"\nrows = \"method\"\n\
                 columns = [\"draw\"]\n\n[base]\nbackbone = \"experiments/backbones/vit_quick.json\"\n\
                 dataset = \"folder\"\nimg_size = 32\nbatch_size = 16\naugment = false\n\
                 epochs = {epochs}\n\n[grid]\nmethod = [{{ name = \"dka\" }}]\ndraw = [0, 1]\n"
            ),
        )
        .unwrap();
        p
    };
    let grid = |e: &Path, out: &Path| {
        ok(common::dka(&[
            "grid",
            e.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--weights",
            "none",
            "--data",
            &synthetic(),
        ]))
    };
    let (grown, fresh) = (t.join("grown"), t.join("fresh"));
    grid(&exp(2), &grown);
    grid(&exp(4), &grown);
    grid(&exp(4), &fresh);
    let rows = common::rows(&grown);
    let continued: Vec<_> = rows
        .iter()
        .filter(|r| r["info"].contains("continued_from"))
        .collect();
    assert_eq!(continued.len(), 2, "both runs continued: {rows:?}");
    let fresh_rows = common::rows(&fresh);
    for c in &continued {
        let info: serde_json::Value = serde_json::from_str(&c["info"]).unwrap();
        let src = info["continued_from"].as_str().unwrap();
        let dir = grown.join("runs").join(&c["id"]);
        let lines = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let src_lines =
            std::fs::read_to_string(grown.join("runs").join(src).join("metrics.csv")).unwrap();
        assert_eq!(lines.lines().count(), 5);
        assert_eq!(
            lines.lines().take(3).collect::<Vec<_>>(),
            src_lines.lines().collect::<Vec<_>>()
        );
        let same = fresh_rows
            .iter()
            .find(|f| f["draw"] == c["draw"])
            .expect("the fresh grid's run of that draw");
        assert_eq!(same["accuracy"], c["accuracy"], "draw {}", c["draw"]);
        assert_ne!(same["id"], c["id"], "the id says it was continued");
    }
}

#[test]
fn every_example_config_checks() {
    let dir = repo().join("experiments/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o = common::dka(&[
                "train",
                p.to_str().unwrap(),
                "--out",
                "/nonexistent/never-written",
                "--check",
            ]);
            assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
            n += 1;
        }
    }
    assert!(n >= 4, "{n} examples");
}
