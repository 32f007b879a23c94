//! The committed results and the README agree: the README's demo block is what
//! `scripts/readme_demo.py` writes from `results/demo/` and `results/demo_convergence/`, its
//! speed-and-memory block what `scripts/readme_bench.py` writes from `results/bench/`, and
//! every run of the demo's `runs.csv` has its training curve in `curves.csv`.
mod common;
use common::repo;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python(repo: &Path) -> PathBuf {
    let venv = repo.join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// `python3 scripts/SCRIPT --check` succeeds: the README block it writes is up to date.
fn readme_block_is_current(script: &str, block: &str, recipe: &str) {
    let repo = repo();
    let out = Command::new(python(&repo))
        .arg(repo.join("scripts").join(script))
        .arg("--check")
        .current_dir(&repo)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "README.md's {block} block differs from what `python3 scripts/{script}` writes from \
         the committed results (rerun it after `{recipe}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readme_demo_block_is_written_from_the_committed_results() {
    readme_block_is_current("readme_demo.py", "demo", "just demo");
}

#[test]
fn the_readme_bench_block_is_written_from_the_committed_results() {
    readme_block_is_current("readme_bench.py", "speed-and-memory", "just bench");
}

fn column(path: &Path, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let i = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("{}: no column {name}", path.display()));
    r.records().map(|rec| rec.unwrap()[i].to_string()).collect()
}

#[test]
fn every_demo_run_has_its_training_curve_committed() {
    for grid in [
        "results/demo",
        "results/demo_convergence",
        "results/demo_lr",
    ] {
        let dir = repo().join(grid);
        let runs: BTreeSet<String> = column(&dir.join("runs.csv"), "id").into_iter().collect();
        let curves: BTreeSet<String> = column(&dir.join("curves.csv"), "run").into_iter().collect();
        assert!(!runs.is_empty(), "{grid}: no runs");
        let missing: Vec<_> = runs.difference(&curves).collect();
        assert!(
            missing.is_empty(),
            "{grid}: runs without a curve: {missing:?}"
        );
    }
}
