//! Property tests of the command-line values the runner parses itself (`--shard`, `--device`,
//! Slurm time limits) and of the sbatch scripts it writes: no input may panic, what has a
//! printer round-trips, and a script either is well formed or is refused.
//!
//! `just test` runs a few dozen cases per property; `just fuzz` sets `PROPTEST_CASES`. A failing
//! case is shrunk and saved to `tests/fuzz_cli.proptest-regressions`, replayed first afterwards.
use dka_bench::grid::runner::Shard;
use dka_bench::grid::slurm::{self, format_time_limit, parse_time_limit, SlurmOptions};
use dka_bench::util::device::DeviceArg;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

mod common;
use common::cases;

// --- command-line values -------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn shards_parse_only_valid_pairs(s in "\\PC{0,12}") {
        if let Ok(sh) = s.parse::<Shard>() {
            prop_assert!(sh.index < sh.count);
        }
    }

    #[test]
    fn shards_round_trip(n in 1usize..10_000, i in any::<prop::sample::Index>()) {
        let i = i.index(n);
        let sh: Shard = format!("{i}/{n}").parse().unwrap();
        prop_assert_eq!((sh.index, sh.count), (i, n));
        // Every grid position is in exactly one shard.
        prop_assert_eq!((0..n).filter(|k| Shard { index: *k, count: n }.contains(i * 7)).count(), 1);
    }

    #[test]
    fn devices_parse_and_print_back(s in "\\PC{0,10}") {
        if let Ok(d) = s.parse::<DeviceArg>() {
            prop_assert_eq!(d.to_string().parse::<DeviceArg>().unwrap(), d);
        }
    }

    #[test]
    fn slurm_time_limits_never_panic(s in "[0-9:-]{0,14}|\\PC{0,14}") {
        if let Ok(Some(secs)) = parse_time_limit(&s) {
            prop_assert_eq!(parse_time_limit(&format_time_limit(secs)).unwrap(), Some(secs));
        }
    }

    #[test]
    fn slurm_time_limits_round_trip(secs in 0u64..10_000_000_000) {
        prop_assert_eq!(parse_time_limit(&format_time_limit(secs)).unwrap(), Some(secs));
    }
}

// --- sbatch scripts ------------------------------------------------------------------------

/// Text with the characters that break scripts: line breaks, quotes, `$`, spaces, `%`.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{1,8}",
        "[a-z \\n\\r'\"$%`\\\\;#=-]{0,12}",
        "\\PC{0,10}",
    ]
}

/// Mostly `good`, sometimes `nasty()`.
fn mostly(good: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![4 => good, 1 => nasty()]
}

fn slurm_args() -> impl Strategy<Value = SlurmOptions> {
    let name = || prop::option::of(mostly("[a-z0-9_-]{1,8}".boxed()));
    (
        (prop::option::of(0u32..4), name(), 0u32..64),
        (
            mostly("[1-9][0-9]{0,3}[KMGT]?".boxed()),
            mostly((1u64..10_000_000).prop_map(format_time_limit).boxed()),
        ),
        (name(), name()),
        (0u32..1000, any::<bool>()),
        prop::collection::vec(mostly("--[a-z-]{1,10}=[a-z0-9]{1,5}".boxed()), 0..3),
    )
        .prop_map(
            |(
                (gpus, gpu_type, cpus),
                (mem, time),
                (partition, account),
                (term, requeue),
                extra,
            )| {
                SlurmOptions {
                    gpus_per_task: gpus,
                    gpu_type,
                    cpus_per_task: cpus,
                    mem,
                    time,
                    partition,
                    account,
                    term_before: term,
                    requeue,
                    sbatch_extra: extra,
                }
            },
        )
}

/// The words a POSIX shell makes of `line` (with `SLURM_ARRAY_TASK_ID=7`).
fn shell_words(line: &str) -> Vec<String> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("f() {{ printf '%s\\0' \"$@\"; }}; f {line}"))
        .env("SLURM_ARRAY_TASK_ID", "7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_string)
        .collect()
}

proptest! {
    #![proptest_config(cases(64))]

    /// Whatever the options and paths, a script is either refused or well-formed: a header of
    /// comments and `#SBATCH` lines (one per option: nothing can inject a line), then commands,
    /// the last one `exec dka grid ...`, which a shell splits back into exactly the arguments.
    #[test]
    fn sbatch_scripts_are_well_formed_or_refused(
        a in slurm_args(),
        device in prop::sample::select(vec![DeviceArg::Auto, DeviceArg::Cpu, DeviceArg::Cuda(0), DeviceArg::Cuda(2)]),
        tasks in 0usize..40,
        experiment in nasty(),
        out in nasty(),
        forward in prop::collection::vec(nasty(), 0..4),
        cwd in nasty(),
    ) {
        let exe = PathBuf::from("/opt/dka/bin/dka");
        let cwd = PathBuf::from("/").join(cwd);
        let job = slurm::Job {
            experiment: Path::new(&experiment),
            out: Path::new(&out),
            tasks,
            runs: 10,
            device,
            forward: &forward,
        };
        let Ok(script) = slurm::script(&a, &job, &exe, &cwd) else { return Ok(()) };
        let lines: Vec<&str> = script.lines().collect();
        prop_assert_eq!(lines[0], "#!/bin/bash");
        let first_cmd = lines.iter().position(|l| !l.starts_with('#')).unwrap();
        let sbatch = lines[..first_cmd].iter().filter(|l| l.starts_with("#SBATCH ")).count();
        let gpus = a.gpus_per_task.unwrap_or(if device == DeviceArg::Cpu { 0 } else { 1 });
        let want = 11 + usize::from(gpus > 0) + usize::from(a.requeue)
            + usize::from(a.partition.is_some()) + usize::from(a.account.is_some())
            + a.sbatch_extra.len();
        prop_assert_eq!(sbatch, want, "{}", script);
        prop_assert!(lines[first_cmd..].iter().all(|l| !l.starts_with("#SBATCH")));
        let exec = lines.last().unwrap();
        prop_assert!(exec.starts_with("exec "), "{}", script);
        let words = shell_words(&exec["exec ".len()..]);
        let mut expected = vec![
            exe.display().to_string(),
            "grid".into(),
            experiment.clone(),
            "--shard".into(),
            format!("7/{tasks}"),
        ];
        expected.extend(forward.iter().cloned());
        prop_assert_eq!(&words[..expected.len()], &expected[..]);
        prop_assert_eq!(words.len(), expected.len() + 2);
        prop_assert_eq!(&words[expected.len()], "--device");
    }
}
