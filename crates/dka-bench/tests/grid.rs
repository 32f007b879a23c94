//! The experiment grid end to end with the `quick` profiles (tiny backbones, synthetic images
//! from `dka data synth` and the registry MRI from `just assets`): every experiment runs and
//! writes runs.csv, table.csv and table.md; a SIGKILLed grid resumes without redoing or
//! duplicating runs; two shards cover a grid once; the same seed gives the same metrics.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{dka, repo, train_cpu};

fn synth(dir: &Path) -> String {
    common::synth(dir, 24, 0)
}

fn mni() -> String {
    let root = repo().join(".assets/mni152");
    assert!(
        root.is_dir(),
        "{} is missing: run `just assets`",
        root.display()
    );
    format!("mni152={}", root.display())
}

fn grid(exp: &str, out: &Path, data: &[String], extra: &[&str]) -> Output {
    let mut args = vec![
        "grid".to_string(),
        format!("experiments/{exp}.toml"),
        "--profile".into(),
        "quick".into(),
        "--out".into(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ];
    for d in data {
        args.extend(["--data".to_string(), d.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    dka(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// runs.csv as id -> (column -> value).
fn runs(out: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(out.join("runs.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let mut m = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        let row: BTreeMap<String, String> = h
            .iter()
            .zip(rec.iter())
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(
            m.insert(rec[0].to_string(), row).is_none(),
            "duplicate row {}",
            &rec[0]
        );
    }
    m
}

/// The experiments that have a `quick` profile (all but the demo).
fn quick_experiments() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("experiments"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_str()?.strip_suffix(".toml")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.contains("[profiles.quick]").then_some(name)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_experiment_runs_its_quick_profile_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![synth(&tmp.path().join("synth")), mni()];
    let names = quick_experiments();
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        let out = tmp.path().join(name);
        let run = grid(name, &out, &data, &[]);
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for f in ["runs.csv", "table.csv", "table.md", "experiment.json"] {
            assert!(out.join(f).is_file(), "{name}: {f} missing");
        }
        // The figure needs DejaVu Sans (present on these machines); without it, it is skipped.
        let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file();
        assert_eq!(out.join("figure.png").is_file(), font, "{name}: figure.png");
        let rows = runs(&out);
        assert!(!rows.is_empty(), "{name}: no runs");
        for (id, row) in &rows {
            let dir = out.join("runs").join(id);
            for f in [
                "config.json",
                "spec.json",
                "manifest.json",
                "metrics.csv",
                "log.txt",
                "result.json",
                "adapter/method.json",
            ] {
                assert!(dir.join(f).is_file(), "{name}/{id}: {f} missing");
            }
            let p: f64 = row["primary"].parse().unwrap();
            assert!((0.0..=1.0).contains(&p), "{name}/{id}: primary {p}");
        }
    }
    // Learnable kernel sizes report their learned radii.
    let t3b = tmp.path().join("table3b_learnable_kernel");
    let learn = runs(&t3b)
        .into_iter()
        .find(|(_, r)| r["method"] == "learnable kernel sizes")
        .unwrap()
        .0;
    let radii = std::fs::read_to_string(t3b.join("runs").join(learn).join("radii.csv")).unwrap();
    assert!(radii.starts_with("module,channel,"), "{radii}");

    // Segmentation tables report the paper's quantity, foreground IoU, and say so.
    let md = std::fs::read_to_string(tmp.path().join("table2_segmentation/table.md")).unwrap();
    assert!(md.contains("foreground IoU (%)"), "{md}");
    let csv = std::fs::read_to_string(tmp.path().join("table2_segmentation/table.csv")).unwrap();
    assert!(
        csv.starts_with("method,dataset,fraction,mean,std,n,failed,paper,metric,miou_mean,miou_std,dice_foreground_mean,dice_foreground_std,diff_vs_dka,"),
        "{csv}"
    );
    assert!(csv.contains(",miou_foreground,"), "{csv}");

    // Full fine-tuning trains the backbone at its own, lower rate, recorded in config.json.
    let t2 = tmp.path().join("table2_classification");
    let (full, _) = runs(&t2)
        .into_iter()
        .find(|(_, r)| r["method"] == "full")
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t2.join("runs").join(full).join("config.json")).unwrap(),
    )
    .unwrap();
    let o = &cfg["optimizer"];
    assert_eq!(o["backbone_lr"].as_f64(), Some(1e-5), "{o}");
    assert!(o["backbone_lr"].as_f64() < o["adapter_lr"].as_f64(), "{o}");
}

#[test]
fn full_fine_tuning_learns_the_synthetic_task() {
    // Real training: full fine-tuning of the tiny random-init ViT (backbone at 1e-3, which a
    // random init needs) on the learnable synthetic task beats chance (1/3).
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        r#"
backbone = "experiments/backbones/vit_quick.json"
dataset = "folder"
img_size = 32
epochs = 4
batch_size = 16
augment = false
method = { name = "full" }
optimizer = { head_lr = 1e-3, adapter_lr = 1e-3, backbone_lr = 1e-3 }
"#,
    )
    .unwrap();
    let out = tmp.path().join("run");
    let run = train_cpu(&cfg, &out, &data);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("accuracy: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(acc > 0.6, "full fine-tuning reached only {acc}");
}

#[test]
fn a_killed_grid_resumes_without_redoing_or_duplicating_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let out = tmp.path().join("out");
    let args = [
        "grid",
        "experiments/fig1_data_size.toml",
        "--profile",
        "quick",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--data",
        &data,
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // Wait until at least two runs are recorded and a later run has started, then SIGKILL.
    let started = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(out.join("runs.csv"))
            .map(|s| s.lines().count().saturating_sub(1))
            .unwrap_or(0);
        let dirs = std::fs::read_dir(out.join("runs"))
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 2 && dirs > n {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "the grid did not progress"
        );
        if child.try_wait().unwrap().is_some() {
            break; // finished before we could kill it: the checks below still hold
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let before = runs(&out);
    let before_mtimes: BTreeMap<String, std::time::SystemTime> = before
        .keys()
        .map(|id| {
            (
                id.clone(),
                std::fs::metadata(out.join("runs").join(id).join("metrics.csv"))
                    .unwrap()
                    .modified()
                    .unwrap(),
            )
        })
        .collect();

    let again = dka(&args);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains(&format!("{} already done", before.len())),
        "{stdout}"
    );
    let after = runs(&out);
    assert_eq!(after.len(), 9, "every run exactly once"); // 3 methods x 3 fractions
    for (id, t) in before_mtimes {
        let now = std::fs::metadata(out.join("runs").join(&id).join("metrics.csv"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(now, t, "finished run {id} was redone");
    }
}

#[test]
fn two_shards_cover_the_grid_once_and_the_same_seed_gives_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![synth(&tmp.path().join("synth"))];
    let whole = tmp.path().join("whole");
    assert!(grid("fig8_kernel_sizes", &whole, &data, &[])
        .status
        .success());
    let sharded = tmp.path().join("sharded");
    for s in ["0/2", "1/2"] {
        let run = grid("fig8_kernel_sizes", &sharded, &data, &["--shard", s]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let (a, b) = (runs(&whole), runs(&sharded));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the shards together ran the grid once"
    );
    for (id, row) in &a {
        for m in ["accuracy", "macro_f1", "auc"] {
            assert_eq!(row[m], b[id][m], "{id} {m}: same seed, same metrics on CPU");
        }
    }
}

#[test]
fn slurm_arrays_and_dry_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let run = grid("table2_classification", &out, &[], &["--emit-slurm", "3"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s = std::fs::read_to_string(out.join("grid.sbatch")).unwrap();
    assert!(
        s.contains("#SBATCH --array=0-2") && s.contains("/3\" --profile quick"),
        "{s}"
    );
    let data = vec![synth(&tmp.path().join("synth"))];
    let dry = grid("table2_classification", &out, &data, &["--dry-run"]);
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout)
            .lines()
            .filter(|l| l.contains("\"method\""))
            .count(),
        22
    );
}

#[test]
fn a_diverging_run_stops_with_a_clear_message_and_keeps_its_finished_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("synth"));
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        r#"
backbone = "experiments/backbones/vit_quick.json"
dataset = "folder"
img_size = 32
epochs = 50
batch_size = 8
augment = false
method = { name = "full" }
optimizer = { kind = "sgd", adapter_lr = 1e30, head_lr = 1e30, backbone_lr = 1e30, momentum = 0.0 }
"#,
    )
    .unwrap();
    let out = tmp.path().join("run");
    let run = train_cpu(&cfg, &out, &data);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "a learning rate of 1e30 must diverge"
    );
    assert!(
        stderr.contains("the loss is")
            && stderr.contains("the run stops")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(out.join("metrics.csv").is_file() && out.join("log.txt").is_file());
}

#[test]
fn a_run_config_with_an_unknown_field_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "backbone = \"vit_tiny_patch16_224\"\nepoch = 3\n").unwrap();
    let run = dka(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
        "--data",
        "busi-cls=/nowhere",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("unknown field `epoch`"),
        "{stderr}"
    );
    assert!(!tmp.path().join("o").exists(), "nothing may be written");
}

/// `--workers 2`: the grid's runs shared by two processes, each run once, the same runs as one
/// process; one worker SIGKILLed mid-grid is reported, the other goes on, and the next grid
/// resumes the killed worker's run: every run once in runs.csv.
#[test]
fn two_workers_share_a_grid_and_a_killed_worker_is_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![synth(&tmp.path().join("synth"))];
    let one = tmp.path().join("one");
    assert!(grid("fig8_kernel_sizes", &one, &data, &[]).status.success());
    let two = tmp.path().join("two");
    let o = grid("fig8_kernel_sizes", &two, &data, &["--workers", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (runs(&one), runs(&two));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "two workers ran the same runs, each once"
    );
    assert!(
        two.join("table.md").is_file(),
        "the table is written once they are done"
    );

    let killed = tmp.path().join("killed");
    let mut args = vec![
        "grid".to_string(),
        "experiments/fig1_data_size.toml".into(),
        "--profile".into(),
        "quick".into(),
        "--out".into(),
        killed.display().to_string(),
        "--device".into(),
        "cpu".into(),
        "--workers".into(),
        "2".into(),
    ];
    for d in &data {
        args.extend(["--data".to_string(), d.clone()]);
    }
    let mut parent = Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(&args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a run folder without a result (a run in progress), then SIGKILL one worker.
    let started = std::time::Instant::now();
    let mut victim = None;
    while victim.is_none() && started.elapsed().as_secs() < 120 {
        let workers: Vec<String> = String::from_utf8_lossy(
            &Command::new("pgrep")
                .args(["-P", &parent.id().to_string()])
                .output()
                .unwrap()
                .stdout,
        )
        .split_whitespace()
        .map(String::from)
        .collect();
        let in_progress = std::fs::read_dir(killed.join("runs"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.path().join("log.txt").is_file() && !e.path().join("result.json").is_file()
                })
            })
            .unwrap_or(false);
        if workers.len() == 2 && in_progress {
            victim = Some(workers[0].clone());
        }
        if parent.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if let Some(pid) = &victim {
        Command::new("kill").args(["-KILL", pid]).status().unwrap();
    }
    let out = parent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if victim.is_some() && !out.status.success() {
        // (If the worker had just finished its last run, nothing is lost or reported.)
        assert!(
            err.contains("stopped") || err.contains("not finished"),
            "{err}"
        );
    }
    let again = Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(&args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(runs(&killed).len(), 9, "every run exactly once"); // 3 methods x 3 fractions
}
