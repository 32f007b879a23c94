//! A run or a grid stopped from outside loses nothing and repeats nothing: SIGTERM
//! checkpoints a run and the restarted run ends as the uninterrupted one (also with another
//! loader thread count; another precision is refused); shard processes killed and restarted
//! on one folder record every run exactly once.
use std::path::Path;
use std::process::Command;

mod common;
use common::{dka, metrics_of, repo, rows, stderr, table_ns, train_cpu, train_cpu_args};

#[test]
fn sigterm_checkpoints_and_the_resumed_run_ends_as_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("synth"), 16, 0);
    let cfg = tmp.path().join("run.toml");
    // Dropout (the authors' DKA) and augmentation: a resume must redraw exactly the same.
    std::fs::write(
        &cfg,
        r#"
backbone = "experiments/backbones/vit_quick.json"
dataset = "folder"
img_size = 32
epochs = 12
batch_size = 8
augment = true
method = { name = "dka", d_hat = 8 }
"#,
    )
    .unwrap();
    let train = |out: &Path| train_cpu_args(&cfg, out, &data);
    let whole = tmp.path().join("whole");
    let a = train_cpu(&cfg, &whole, &data);
    assert!(a.status.success(), "{}", stderr(&a));

    let cut = tmp.path().join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(train(&cut))
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let rows = std::fs::read_to_string(cut.join("metrics.csv"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if rows >= 4 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "the run did not progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the signal"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{e}");
    assert!(
        e.contains("interrupted by SIGTERM") && !e.contains("panicked"),
        "{e}"
    );
    assert!(cut.join("checkpoint/state.json").is_file());
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Continuing in another precision is refused in one line; the checkpoint stays.
    let bf16 = tmp.path().join("bf16.toml");
    std::fs::write(&bf16, format!("{text}precision = \"bf16\"\n")).unwrap();
    let refused = train_cpu(&bf16, &cut, &data);
    let e = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        e.contains("the run trained in fp32 and would continue in bf16")
            && e.contains("precision = \"fp32\""),
        "{e}"
    );
    assert!(cut.join("checkpoint/state.json").is_file());
    // Resumed with another loader thread count (a node with other cores): the checkpoint is
    // this run's all the same.
    let threads = tmp.path().join("threads.toml");
    std::fs::write(&threads, format!("{text}loader_threads = 3\n")).unwrap();
    let b = train_cpu(&threads, &cut, &data);
    assert!(b.status.success(), "{}", stderr(&b));
    // The checkpoint stays as the run's final state (for --continue): it is now the state
    // after the last epoch.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["epoch"], 12, "the final state");
    let log = std::fs::read_to_string(cut.join("log.txt")).unwrap();
    assert!(
        log.contains("resumed from the checkpoint at epoch"),
        "{log}"
    );
    assert_eq!(
        metrics_of(&a),
        metrics_of(&b),
        "same metrics as the uninterrupted run"
    );
    let rows = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').filter(|_| true).collect::<Vec<_>>()[..2].join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(&whole),
        rows(&cut),
        "the same training loss every epoch"
    );
}

#[test]
fn concurrent_shards_killed_and_restarted_record_every_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("synth"), 8, 0);
    let out = tmp.path().join("out");
    let p = tmp.path().join("exp.toml");
    std::fs::write(
        &p,
        r#"
name = "t"
title = "T"
metric = "accuracy"
rows = "method"
columns = ["dataset"]

[base]
backbone = "experiments/backbones/vit_quick.json"
img_size = 32
epochs = 6
batch_size = 4
augment = false

[grid]
method = [{ name = "linear" }, { name = "lora" }, { name = "dka" }]
dataset = ["folder"]
draw = [0, 1, 2]
"#,
    )
    .unwrap();
    let args = |shard: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "grid",
            p.to_str().unwrap(),
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
        .to_vec();
        if !shard.is_empty() {
            a.extend(["--shard".to_string(), shard.to_string()]);
        }
        a
    };
    let spawn = |shard: &str| {
        Command::new(env!("CARGO_BIN_EXE_dka"))
            .args(args(shard))
            .current_dir(repo())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Three shards and an unsharded process on one folder at once; shard 1 is killed early.
    let mut procs: Vec<std::process::Child> =
        ["0/3", "1/3", "2/3", ""].iter().map(|s| spawn(s)).collect();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = procs[1].kill();
    for c in procs.iter_mut() {
        let _ = c.wait();
    }
    // Restart everything (a resubmitted array): each run must end up recorded exactly once.
    let mut again: Vec<std::process::Child> =
        ["0/3", "1/3", "2/3"].iter().map(|s| spawn(s)).collect();
    for c in again.iter_mut() {
        let _ = c.wait();
    }
    let last = dka(&args("").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(
        String::from_utf8_lossy(&last.stdout).contains("0 run(s) finished now, 9 already done"),
        "{}",
        String::from_utf8_lossy(&last.stdout)
    );
    let r = rows(&out);
    let ids: std::collections::BTreeSet<&String> = r.iter().map(|x| &x["id"]).collect();
    assert_eq!(r.len(), 9, "every run exactly once");
    assert_eq!(ids.len(), 9);
    assert!(r.iter().all(|x| x["status"] == "ok"));
    assert_eq!(table_ns(&out), ["3", "3", "3"]);
}
