//! What the end-to-end tests of the `dka` binary share: the repository root, running the
//! binary there, and a synthetic image folder made by `dka data synth`.
#![allow(dead_code)] // each test binary uses its own subset

use proptest::test_runner::{Config, FileFailurePersistence};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `dka ARGS` in the repository root, logging warnings only.
/// A parity fixture's folder (`just fixtures` writes them; `just test` runs it first).
pub fn fixture(name: &str) -> PathBuf {
    let dir = repo().join("fixtures").join(name);
    assert!(
        dir.join("io.safetensors").is_file(),
        "fixture {} is missing: run `just fixtures` (or `just test`)",
        dir.display()
    );
    dir
}

pub fn dka(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The arguments of `dka train CFG --out OUT --device cpu --data DATA --weights none`
/// (random initialisation: the configs of the tests name no weights).
pub fn train_cpu_args(cfg: &Path, out: &Path, data: &str) -> Vec<String> {
    let (cfg, out) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    [
        "train",
        cfg,
        "--out",
        out,
        "--device",
        "cpu",
        "--data",
        data,
        "--weights",
        "none",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `dka train CFG --out OUT --device cpu --data DATA --weights none`.
pub fn train_cpu(cfg: &Path, out: &Path, data: &str) -> Output {
    dka(&train_cpu_args(cfg, out, data)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
}

/// The `train_loss` column of a run folder's `metrics.csv`, one value per epoch.
pub fn train_losses(run: &Path) -> Vec<f64> {
    let mut r = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|c| c == "train_loss")
        .expect("metrics.csv has a train_loss column");
    r.records()
        .map(|rec| rec.unwrap()[col].parse().unwrap())
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A synthetic 3-class folder of 32x32 images (`per_class` each, seeded) at `dir`, as the
/// `--data` value that names it.
pub fn synth(dir: &Path, per_class: usize, seed: u64) -> String {
    ok(dka(&[
        "data",
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--classes",
        "3",
        "--per-class",
        &per_class.to_string(),
        "--size",
        "32",
        "--seed",
        &seed.to_string(),
    ]));
    format!("folder={}", dir.display())
}

/// The synthetic folder the quick grid uses (3 classes, 40 images each, 32x32, seed 0), made
/// once per test binary in a temporary folder that lives as long as the binary; as the `--data`
/// value that names it. Tests never rely on a folder an earlier recipe left in `.assets/`.
pub fn shared_synthetic() -> String {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = synth(&tmp.path().join("synthetic"), 40, 0);
        (tmp, data)
    })
    .1
    .clone()
}

/// A CSV file's rows as column -> value maps; fails when a column name repeats (pandas would
/// rename the second one silently).
pub fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    let mut names: Vec<&str> = h.iter().collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        h.len(),
        "a column name repeats in {}: {h:?}",
        path.display()
    );
    r.records()
        .map(|rec| {
            h.iter()
                .zip(rec.unwrap().iter())
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        })
        .collect()
}

/// runs.csv rows as column -> value maps.
pub fn rows(out: &Path) -> Vec<BTreeMap<String, String>> {
    csv_rows(&out.join("runs.csv"))
}

/// `name: value` lines of a command's output.
pub fn metrics_of(o: &Output) -> BTreeMap<String, f64> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// table.csv's `n` column.
pub fn table_ns(out: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(out.join("table.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let n = h.iter().position(|c| c == "n").unwrap();
    r.records().map(|x| x.unwrap()[n].to_string()).collect()
}

/// `default` cases unless `PROPTEST_CASES` says otherwise.
pub fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}
