//! `dka grid EXP --emit-slurm N`: an sbatch job array whose task `i` runs shard `i/N` of the
//! grid (0-based, as `--array=0-(N-1)` numbers its tasks).
//!
//! The script asks for what one task needs (GPUs through GRES, CPUs, memory, a time limit),
//! starts in the directory `dka grid` was called from (`--chdir`), so the experiment's
//! relative paths resolve as they did here, logs to `OUT/slurm/<array job>_<task>.log`
//! (appending, so a requeued task keeps its history), and `exec`s `dka`, so the signals Slurm
//! sends the batch step (`--signal=B:TERM@120`: SIGTERM two minutes before the time limit;
//! preemption, `scancel`) reach `dka` itself. Each task uses the first GPU Slurm gave it
//! (`--device cuda:0`; Slurm sets `CUDA_VISIBLE_DEVICES` to the task's own GPUs), or the CPU
//! on CPU-only clusters (`--gpus-per-task 0`).
//!
//! Finished runs are skipped and interrupted ones redone (see [`crate::grid`]), so
//! resubmitting the whole array, or one task (`sbatch --array=2 grid.sbatch`), resumes the
//! grid; `--requeue` lets Slurm do that itself after a preemption or a node failure.
use crate::util::device::DeviceArg;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// What each array task asks Slurm for (`dka grid --emit-slurm N`).
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    /// [slurm] GPUs per array task (`#SBATCH --gres=gpu:N`); 0 asks for none and runs on the
    /// CPU (CPU-only clusters) [default: 1; 0 with --device cpu].
    pub gpus_per_task: Option<u32>,
    /// [slurm] GPU type as the cluster names it in GRES (`--gres=gpu:TYPE:N`), e.g. a100.
    pub gpu_type: Option<String>,
    /// [slurm] CPUs per array task (data loading, libtorch threads).
    pub cpus_per_task: u32,
    /// [slurm] Memory per array task (`--mem`: a number with an optional K, M, G or T suffix).
    pub mem: String,
    /// [slurm] Time limit per array task (`--time`: MINUTES, HH:MM:SS, D-HH:MM:SS, ...).
    pub time: String,
    /// [slurm] Partition (`--partition`).
    pub partition: Option<String>,
    /// [slurm] Account to charge (`--account`).
    pub account: Option<String>,
    /// [slurm] Seconds before the time limit at which Slurm sends dka SIGTERM
    /// (`--signal=B:TERM@SECONDS`).
    pub term_before: u32,
    /// [slurm] Let Slurm requeue a task after preemption or a node failure (`--requeue`); the
    /// requeued task resumes the shard.
    pub requeue: bool,
    /// [slurm] One more header line, `#SBATCH --OPTION` or just `--OPTION` (repeatable), e.g.
    /// `--sbatch-extra "#SBATCH --qos=high"`.
    pub sbatch_extra: Vec<String>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        Self {
            gpus_per_task: None,
            gpu_type: None,
            cpus_per_task: 8,
            mem: "32G".into(),
            time: "24:00:00".into(),
            partition: None,
            account: None,
            term_before: 120,
            requeue: false,
            sbatch_extra: Vec::new(),
        }
    }
}

/// What the script runs.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The experiment file, as given on the command line.
    pub experiment: &'a Path,
    /// The results folder; the logs go to its `slurm/` folder.
    pub out: &'a Path,
    /// Array tasks (= shards).
    pub tasks: usize,
    /// Runs in the grid (for the header and a warning when tasks would be idle).
    pub runs: usize,
    /// `--device` as given to `dka grid` (`auto`: `cuda:0` with GPUs, else `cpu`).
    pub device: DeviceArg,
    /// `dka grid` arguments every task gets besides the experiment, the shard and the device
    /// (`--profile`, `--data`, `--out`, ...), one word each.
    pub forward: &'a [String],
}

/// Seconds of a Slurm time limit: `MINUTES`, `MINUTES:SECONDS`, `HOURS:MINUTES:SECONDS`,
/// `DAYS-HOURS`, `DAYS-HOURS:MINUTES` or `DAYS-HOURS:MINUTES:SECONDS`; `None` for
/// `UNLIMITED` / `INFINITE`.
pub fn parse_time_limit(s: &str) -> anyhow::Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("infinite") {
        return Ok(None);
    }
    let bad = || {
        anyhow::anyhow!(
            "--time {s:?}: not a Slurm time limit (MINUTES, HH:MM:SS, D-HH, D-HH:MM or \
             D-HH:MM:SS)"
        )
    };
    let num = |x: &str| -> anyhow::Result<u64> {
        if x.is_empty() || x.len() > 9 || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        x.parse().map_err(|_| bad())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<anyhow::Result<_>>()?;
    // [days, hours, minutes, seconds]
    let dhms = match (days, parts.as_slice()) {
        (None, [m]) => [0, 0, *m, 0],
        (None, [m, s]) => [0, 0, *m, *s],
        (None, [h, m, s]) => [0, *h, *m, *s],
        (Some(d), [h]) => [d, *h, 0, 0],
        (Some(d), [h, m]) => [d, *h, *m, 0],
        (Some(d), [h, m, s]) => [d, *h, *m, *s],
        _ => return Err(bad()),
    };
    let secs = dhms[0] * 86_400 + dhms[1] * 3_600 + dhms[2] * 60 + dhms[3];
    Ok(Some(secs))
}

/// Slurm's `D-HH:MM:SS` for a number of seconds.
pub fn format_time_limit(secs: u64) -> String {
    let (d, r) = (secs / 86_400, secs % 86_400);
    format!("{d}-{:02}:{:02}:{:02}", r / 3_600, r % 3_600 / 60, r % 60)
}

/// A `--mem` value: digits with an optional K, M, G or T suffix.
fn check_mem(s: &str) -> anyhow::Result<()> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = s.len() - digits.len();
    if digits.is_empty()
        || suffix > 1
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.bytes().all(|b| b == b'0')
    {
        bail!("--mem {s:?}: expected a positive number with an optional K, M, G or T suffix");
    }
    Ok(())
}

/// A name Slurm takes as one word (partition, account, GPU type).
fn check_word(option: &str, s: &str) -> anyhow::Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,+:".contains(c))
    {
        bail!("--{option} {s:?}: expected a name of letters, digits and -_.,+:");
    }
    Ok(())
}

/// `--sbatch-extra`: one `#SBATCH --option` line (`#SBATCH ` added to a bare `--option`).
fn extra_line(s: &str) -> anyhow::Result<String> {
    let t = s.trim();
    if t.contains(['\n', '\r']) {
        bail!("--sbatch-extra {s:?}: one line per --sbatch-extra");
    }
    let line = if t.starts_with('-') {
        format!("#SBATCH {t}")
    } else {
        t.to_string()
    };
    match line.strip_prefix("#SBATCH ") {
        Some(o) if o.trim_start().starts_with('-') => Ok(line),
        _ => {
            bail!("--sbatch-extra {s:?}: expected `#SBATCH --OPTION[=VALUE]` or `--OPTION[=VALUE]`")
        }
    }
}

/// A path as the value of an `#SBATCH` option: sbatch splits its lines at white space unless
/// quoted, so a value with spaces is double-quoted; quotes, backslashes and line breaks are
/// refused.
fn sbatch_value(what: &str, s: &str) -> anyhow::Result<String> {
    if s.contains(['"', '\'', '\n', '\r', '\\']) {
        bail!("{what} {s:?}: sbatch cannot take a path with quotes, backslashes or line breaks");
    }
    Ok(if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s.to_string()
    })
}

fn utf8<'p>(what: &str, p: &'p Path) -> anyhow::Result<&'p str> {
    p.to_str()
        .with_context(|| format!("{what} {}: not UTF-8", p.display()))
}

/// `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+%@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// GPUs per task: as given, else none for `--device cpu` and one otherwise.
fn gpus(a: &SlurmOptions, device: DeviceArg) -> u32 {
    a.gpus_per_task
        .unwrap_or(if device == DeviceArg::Cpu { 0 } else { 1 })
}

/// The device each task passes to `dka grid`.
fn task_device(a: &SlurmOptions, device: DeviceArg) -> anyhow::Result<String> {
    let g = gpus(a, device) as usize;
    Ok(match device {
        DeviceArg::Auto if g == 0 => "cpu".into(),
        DeviceArg::Auto => "cuda:0".into(),
        DeviceArg::Cpu if g > 0 => bail!(
            "--device cpu with --gpus-per-task {g}: each task would hold {g} GPU(s) it does not \
             use; pass --gpus-per-task 0 for CPU-only tasks"
        ),
        DeviceArg::Cpu => "cpu".into(),
        DeviceArg::Cuda(i) if i >= g => bail!(
            "--device cuda:{i} with --gpus-per-task {g}: each task sees only its own GPU(s), \
             numbered from 0 (Slurm sets CUDA_VISIBLE_DEVICES); use --device cuda:0{}",
            if g == 0 {
                " and --gpus-per-task 1 or more"
            } else {
                ""
            }
        ),
        DeviceArg::Cuda(i) => format!("cuda:{i}"),
    })
}

/// The job name: `dka-` and the experiment file's stem, in letters, digits, `-` and `_`.
fn job_name(experiment: &Path) -> String {
    let stem: String = experiment
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("dka-{stem}")
}

/// Refuses options Slurm would reject or misread, before anything is written.
fn check_options(a: &SlurmOptions, job: &Job) -> anyhow::Result<()> {
    if job.tasks == 0 {
        bail!("--emit-slurm needs at least one array task");
    }
    let limit = parse_time_limit(&a.time)?;
    if limit == Some(0) {
        bail!("--time {}: a time limit of zero", a.time);
    }
    if let Some(l) = limit {
        if u64::from(a.term_before) >= l {
            bail!(
                "--term-before {} s is not shorter than the time limit --time {} ({} s): dka \
                 would be told to stop when it starts",
                a.term_before,
                a.time,
                l
            );
        }
    }
    check_mem(&a.mem)?;
    if a.cpus_per_task == 0 {
        bail!("--cpus-per-task must be at least 1");
    }
    for (opt, v) in [
        ("partition", &a.partition),
        ("account", &a.account),
        ("gpu-type", &a.gpu_type),
    ] {
        if let Some(v) = v {
            check_word(opt, v)?;
        }
    }
    Ok(())
}

/// The header: comments saying what the script is, then one `#SBATCH` line per option.
fn header(a: &SlurmOptions, job: &Job, cwd: &Path) -> anyhow::Result<Vec<String>> {
    let n = job.tasks;
    let extra = a
        .sbatch_extra
        .iter()
        .map(|l| extra_line(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let logs = cwd.join(job.out).join("slurm");
    // Slurm expands %-patterns in log names; a literal % is written %%.
    let log_file = sbatch_value(
        "the results folder",
        &(utf8("the results folder", &logs)?.replace('%', "%%") + "/%A_%a.log"),
    )?;
    // Paths in comments: escaped, so that a line break cannot end a comment.
    let (exp_c, out_c) = (
        utf8("the experiment file", job.experiment)?
            .escape_debug()
            .to_string(),
        job.out.display().to_string().escape_debug().to_string(),
    );
    let mut h = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# Written by `dka grid --emit-slurm {n}` for {exp_c}: {} run(s) in {n} array \
             task(s); task i runs shard i/{n}.",
            job.runs
        ),
        format!(
            "# Submit: sbatch {out_c}/grid.sbatch. Finished runs are skipped and interrupted \
             ones redone, so"
        ),
        "# resubmitting the array, or one task (sbatch --array=I ...), resumes the grid. dka is \
         exec'd,"
            .into(),
        "# so Slurm's SIGTERM (time limit, preemption, scancel) reaches it. Logs: OUT/slurm/."
            .into(),
    ];
    let mut sb = |s: String| h.push(format!("#SBATCH {s}"));
    sb(format!("--job-name={}", job_name(job.experiment)));
    sb(format!("--array=0-{}", n - 1));
    sb("--nodes=1".into());
    sb("--ntasks=1".into());
    sb(format!("--cpus-per-task={}", a.cpus_per_task));
    sb(format!("--mem={}", a.mem));
    sb(format!("--time={}", a.time.trim()));
    let g = gpus(a, job.device);
    if g > 0 {
        match &a.gpu_type {
            Some(t) => sb(format!("--gres=gpu:{t}:{g}")),
            None => sb(format!("--gres=gpu:{g}")),
        }
    }
    sb(format!(
        "--chdir={}",
        sbatch_value("the working directory", utf8("the working directory", cwd)?)?
    ));
    sb(format!("--output={log_file}"));
    sb("--open-mode=append".into());
    sb(format!("--signal=B:TERM@{}", a.term_before));
    if a.requeue {
        sb("--requeue".into());
    }
    if let Some(p) = &a.partition {
        sb(format!("--partition={p}"));
    }
    if let Some(acc) = &a.account {
        sb(format!("--account={acc}"));
    }
    h.extend(extra);
    Ok(h)
}

/// The commands: the task's environment, a line in the log, and `exec dka grid …` on its shard.
fn body(a: &SlurmOptions, job: &Job, exe: &Path, device: String) -> anyhow::Result<Vec<String>> {
    let n = job.tasks;
    let exe_s = utf8("the dka executable", exe)?;
    let exp = utf8("the experiment file", job.experiment)?;
    // One command line: no argument may hold a line break.
    for w in [exe_s, exp]
        .into_iter()
        .chain(job.forward.iter().map(String::as_str))
    {
        if w.contains(['\n', '\r']) {
            bail!("{w:?}: a line break cannot go into the job script's command line");
        }
    }
    let mut cmd = vec![
        shell_quote(exe_s),
        "grid".into(),
        shell_quote(exp),
        "--shard".into(),
        format!("\"${{SLURM_ARRAY_TASK_ID}}/{n}\""),
    ];
    cmd.extend(job.forward.iter().map(|w| shell_quote(w)));
    cmd.extend(["--device".into(), device]);
    let mut b = vec![
        // sbatch reads #SBATCH lines only up to the first command.
        "set -euo pipefail".to_string(),
        ": \"${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}\"".into(),
        "export OMP_NUM_THREADS=\"${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}\"".into(),
        format!(
            "echo \"dka: shard ${{SLURM_ARRAY_TASK_ID}}/{n}, job ${{SLURM_JOB_ID:-?}} on \
             $(hostname), CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}, $(date -u \
             +%FT%TZ)\" >&2"
        ),
    ];
    if gpus(a, job.device) > 0 {
        b.push(
            "[ -n \"${CUDA_VISIBLE_DEVICES:-}\" ] || echo \"dka: warning: Slurm set no \
             CUDA_VISIBLE_DEVICES (no GRES gpu configured?): cuda:0 is the node's first GPU, \
             maybe another task's\" >&2"
                .into(),
        );
    }
    b.push(format!("exec {}", cmd.join(" ")));
    Ok(b)
}

/// The script's text. `exe` is the `dka` executable the tasks run, `cwd` the directory they
/// start in (absolute).
pub fn script(a: &SlurmOptions, job: &Job, exe: &Path, cwd: &Path) -> anyhow::Result<String> {
    check_options(a, job)?;
    let device = task_device(a, job.device)?;
    let header = header(a, job, cwd)?;
    let body = body(a, job, exe, device)?;
    Ok(header.join("\n") + "\n" + &body.join("\n") + "\n")
}

/// Writes `OUT/grid.sbatch` (and creates `OUT/slurm/` for the logs: Slurm does not create
/// it); returns the script's path. Tasks run this `dka` executable from the current
/// directory.
pub fn emit(a: &SlurmOptions, job: &Job) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the path of this dka executable")?;
    let cwd = std::env::current_dir().context("the current directory")?;
    let text = script(a, job, &exe, &cwd)?;
    let logs = job.out.join("slurm");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("creating the log folder {}", logs.display()))?;
    let path = job.out.join("grid.sbatch");
    crate::util::fs::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests;
