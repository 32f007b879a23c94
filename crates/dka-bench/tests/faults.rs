//! The fault suite: every loader and every user-facing file format given something malformed,
//! through the `dka` binary, one table of cases (`faults/data.rs`: images, masks, CSV, NIfTI,
//! each loader; `faults/files.rs`: run configs, experiment files, manifests, weights, peft and
//! dka adapters, inputs, results folders).
//!
//! Every case must end with a non-zero exit, an `error:` that names the file and the problem,
//! no panic (the binary prints `error: internal error: ...` on one) and no half-written output
//! (the command's outputs absent, no temporary file left). A case marked `known_gap` documents
//! a defect owned by other code: it still runs and is reported, and the suite fails once the
//! defect is fixed, so that the mark is removed and the table stays true. Library-level cases
//! of the loaders live in `dka-data/tests/bad_input.rs` and the weights' load report in
//! `tests/cli.rs`; they are not repeated here. Uses the timm fixtures (`just fixtures`).
#[path = "../../dka-data/tests/common/mod.rs"]
mod common;
#[path = "faults/data.rs"]
mod data;
#[path = "faults/files.rs"]
mod files;
#[path = "faults/models.rs"]
mod models;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One malformed input and what must follow from it.
#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    /// Builds the inputs in a fresh folder and says how to run `dka` on them.
    pub setup: fn(&Path) -> Fault,
}

/// A `dka` command on a malformed input and the checks on its outcome.
#[derive(Default)]
pub struct Fault {
    pub args: Vec<String>,
    /// Each must appear in stderr: the file (as the command was given it) and the problem.
    pub needles: Vec<String>,
    /// Outputs that must not exist afterwards.
    pub absent: Vec<PathBuf>,
    /// Folders that must hold no temporary file (`*.tmp*`) afterwards.
    pub clean: Vec<PathBuf>,
    /// Folders that may exist afterwards but must hold no file (e.g. a results folder
    /// created before the error).
    pub empty: Vec<PathBuf>,
    /// A known defect elsewhere (what and whose); see the module doc.
    pub gap: Option<&'static str>,
    /// Why this machine cannot set the case up (the case is then counted as skipped).
    pub skip: Option<String>,
    /// Kept alive while the command runs, dropped before the case's folder is removed (e.g.
    /// a mounted file system).
    pub keep: Vec<Box<dyn std::any::Any>>,
}

impl Fault {
    pub fn run<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Self {
        Fault {
            args: args.into_iter().map(|s| s.as_ref().to_string()).collect(),
            ..Fault::default()
        }
    }
    /// More arguments.
    pub fn also<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }
    /// The error must name this file.
    pub fn names(mut self, p: impl AsRef<Path>) -> Self {
        self.needles.push(p.as_ref().display().to_string());
        self
    }
    /// The error must say this.
    pub fn says(mut self, s: &str) -> Self {
        self.needles.push(s.to_string());
        self
    }
    pub fn absent(mut self, p: impl Into<PathBuf>) -> Self {
        self.absent.push(p.into());
        self
    }
    pub fn clean(mut self, p: impl Into<PathBuf>) -> Self {
        self.clean.push(p.into());
        self
    }
    pub fn empty(mut self, p: impl Into<PathBuf>) -> Self {
        self.empty.push(p.into());
        self
    }
    pub fn gap(mut self, why: &'static str) -> Self {
        self.gap = Some(why);
        self
    }
    pub fn skip(reason: String) -> Self {
        Fault {
            skip: Some(reason),
            ..Fault::default()
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    let dir = repo().join("fixtures").join(name);
    assert!(
        dir.join("io.safetensors").is_file(),
        "fixture {} is missing: run `just fixtures`",
        dir.display()
    );
    dir
}

/// `p` as a command-line argument.
pub fn s(p: impl AsRef<Path>) -> String {
    p.as_ref().display().to_string()
}

/// Runs `dka` from the repository root (experiment files name backbones relative to it), at
/// most `limit`; returns (exit code or `None` when killed, stderr).
fn dka(args: &[String], limit: Duration) -> (Option<i32>, String) {
    // `dka train` needs --weights; the cases train random-init backbones unless they say.
    let mut args = args.to_vec();
    if args.first().is_some_and(|a| a == "train") && !args.iter().any(|a| a == "--weights") {
        args.extend(["--weights".to_string(), "none".to_string()]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_dka"))
        .args(&args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    match status {
        Some(st) => {
            use std::os::unix::process::ExitStatusExt;
            match st.code() {
                Some(c) => (Some(c), err),
                None => (None, format!("{err}\n(killed by signal {:?})", st.signal())),
            }
        }
        None => (
            None,
            format!("{err}\n(still running after {limit:?}; killed)"),
        ),
    }
}

/// Files under `dir` (recursively) whose name satisfies `pick`.
fn files_under(dir: &Path, pick: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, pick, found);
        } else if pick(&e.file_name().to_string_lossy()) {
            found.push(p);
        }
    }
}

/// What is wrong with the outcome of `f` (empty: a clean failure).
fn violations(f: &Fault, code: Option<i32>, stderr: &str) -> Vec<String> {
    let mut v = Vec::new();
    match code {
        Some(0) => v.push("exit status 0".into()),
        Some(101) => v.push("exit status 101 (a panic)".into()),
        None => v.push("did not exit by itself".into()),
        Some(_) => {}
    }
    if stderr.contains("internal error") || stderr.contains("panicked") {
        v.push("panicked".into());
    }
    let Some(at) = stderr.find("error: ") else {
        v.push("no `error:` line".into());
        return v;
    };
    let error = &stderr[at..];
    for n in &f.needles {
        if !error.contains(n.as_str()) {
            v.push(format!("the error does not say `{n}`"));
        }
    }
    for p in &f.absent {
        if p.exists() {
            v.push(format!("{} was written", p.display()));
        }
    }
    let mut tmp = Vec::new();
    for d in &f.clean {
        files_under(d, &|n| n.contains(".tmp"), &mut tmp);
    }
    for p in tmp {
        v.push(format!("temporary file {} left behind", p.display()));
    }
    let mut written = Vec::new();
    for d in &f.empty {
        files_under(d, &|_| true, &mut written);
    }
    for p in written {
        v.push(format!("{} was written", p.display()));
    }
    v
}

enum Outcome {
    Clean,
    Gap(&'static str, Vec<String>),
    Skipped(String),
    Bad(Vec<String>, String),
}

fn run_case(c: &Case) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut f = (c.setup)(dir.path());
    if let Some(why) = f.skip {
        return Outcome::Skipped(why);
    }
    let (code, stderr) = dka(&f.args, Duration::from_secs(180));
    let v = violations(&f, code, &stderr);
    drop(std::mem::take(&mut f.keep));
    let summary = || {
        format!(
            "dka {}\nexit {code:?}; stderr:\n{}",
            f.args.join(" "),
            stderr.trim_end()
        )
    };
    match (f.gap, v.is_empty()) {
        (None, true) => Outcome::Clean,
        (None, false) => Outcome::Bad(v, summary()),
        (Some(g), false) => Outcome::Gap(g, v),
        (Some(g), true) => Outcome::Bad(
            vec![format!(
                "marked as a known gap ({g}) but it now fails cleanly: remove the mark"
            )],
            summary(),
        ),
    }
}

fn cases() -> Vec<Case> {
    [data::cases(), files::cases(), models::cases()].concat()
}

/// The number of cases is in the test's name; the table below is printed with each case's
/// outcome (`cargo test -p dka-bench --test faults -- --nocapture`).
#[test]
fn fault_suite_of_105_cases_fails_cleanly() {
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(c) = cases.get(i) else { break };
                let o = run_case(c);
                results.lock().unwrap().push((i, o));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let (mut clean, mut gaps, mut skipped, mut bad) = (0, 0, 0, Vec::new());
    println!("| # | case | outcome |\n|---|---|---|");
    for (i, o) in &results {
        let name = cases[*i].name;
        let text = match o {
            Outcome::Clean => {
                clean += 1;
                "fails cleanly".to_string()
            }
            Outcome::Gap(g, v) => {
                gaps += 1;
                format!("KNOWN GAP: {g} ({})", v.join("; "))
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                format!("skipped: {why}")
            }
            Outcome::Bad(v, detail) => {
                bad.push(format!("{name}: {}\n{detail}", v.join("; ")));
                format!("FAILED: {}", v.join("; "))
            }
        };
        println!("| {} | {name} | {text} |", i + 1);
    }
    println!(
        "fault suite: {} cases, {clean} fail cleanly, {gaps} known gaps, {skipped} skipped, {} \
         failed",
        cases.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
    assert_eq!(
        cases.len(),
        105,
        "the test's name states the case count: rename it"
    );
}
