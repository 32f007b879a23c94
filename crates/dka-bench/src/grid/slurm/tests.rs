use super::*;

fn job<'a>(forward: &'a [String], device: DeviceArg) -> Job<'a> {
    Job {
        experiment: Path::new("experiments/my exp.toml"),
        out: Path::new("results/my out"),
        tasks: 4,
        runs: 10,
        device,
        forward,
    }
}

fn text(a: &SlurmOptions, device: DeviceArg) -> anyhow::Result<String> {
    let fwd = [
        "--profile".to_string(),
        "quick".into(),
        "--data".into(),
        "folder=a b".into(),
    ];
    script(
        a,
        &job(&fwd, device),
        Path::new("/opt/dka/bin/dka"),
        Path::new("/home/me/dka"),
    )
}

fn sbatch_lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| l.starts_with("#SBATCH ")).collect()
}

#[test]
fn a_gpu_array_binds_each_task_to_its_first_visible_gpu() {
    let s = text(&SlurmOptions::default(), DeviceArg::Auto).unwrap();
    let lines = sbatch_lines(&s);
    for want in [
        "#SBATCH --job-name=dka-my_exp",
        "#SBATCH --array=0-3",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32G",
        "#SBATCH --time=24:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --chdir=/home/me/dka",
        "#SBATCH --output=\"/home/me/dka/results/my out/slurm/%A_%a.log\"",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=B:TERM@120",
    ] {
        assert!(lines.contains(&want), "{want} missing:\n{s}");
    }
    assert!(!s.contains("--requeue"), "{s}");
    let exec = s.lines().last().unwrap();
    assert_eq!(
        exec,
        "exec /opt/dka/bin/dka grid 'experiments/my exp.toml' --shard \
         \"${SLURM_ARRAY_TASK_ID}/4\" --profile quick --data 'folder=a b' --device cuda:0"
    );
    // Every #SBATCH line comes before the first command (sbatch stops reading there).
    let first_cmd = s
        .lines()
        .position(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    let lines_v: Vec<&str> = s.lines().collect();
    let last_sbatch = lines_v
        .iter()
        .rposition(|l| l.starts_with("#SBATCH"))
        .unwrap();
    assert!(last_sbatch < first_cmd, "{s}");
    assert!(s.contains("CUDA_VISIBLE_DEVICES"), "{s}");
}

#[test]
fn user_options_pass_through() {
    let a = SlurmOptions {
        gpus_per_task: Some(2),
        gpu_type: Some("a100".into()),
        cpus_per_task: 4,
        mem: "64G".into(),
        time: "2-00:00:00".into(),
        partition: Some("gpu".into()),
        account: Some("proj-42".into()),
        term_before: 300,
        requeue: true,
        sbatch_extra: vec!["#SBATCH --qos=high".into(), "--exclude=node7".into()],
    };
    let s = text(&a, DeviceArg::Cuda(1)).unwrap();
    let lines = sbatch_lines(&s);
    for want in [
        "#SBATCH --gres=gpu:a100:2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=64G",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj-42",
        "#SBATCH --signal=B:TERM@300",
        "#SBATCH --requeue",
        "#SBATCH --qos=high",
        "#SBATCH --exclude=node7",
    ] {
        assert!(lines.contains(&want), "{want} missing:\n{s}");
    }
    assert!(s.ends_with("--device cuda:1\n"), "{s}");
}

#[test]
fn cpu_only_tasks_ask_for_no_gpu() {
    let none = SlurmOptions {
        gpus_per_task: Some(0),
        ..SlurmOptions::default()
    };
    for (a, d) in [
        (&none, DeviceArg::Auto),
        (&none, DeviceArg::Cpu),
        (&SlurmOptions::default(), DeviceArg::Cpu),
    ] {
        let s = text(a, d).unwrap();
        assert!(!s.contains("--gres"), "{s}");
        assert!(!s.contains("CUDA_VISIBLE_DEVICES:-}"), "{s}");
        assert!(s.ends_with("--device cpu\n"), "{s}");
    }
}

#[test]
fn inconsistent_options_are_refused() {
    let cpu = SlurmOptions {
        gpus_per_task: Some(0),
        ..SlurmOptions::default()
    };
    let one = SlurmOptions {
        gpus_per_task: Some(1),
        ..SlurmOptions::default()
    };
    let cases: Vec<(SlurmOptions, DeviceArg, &str)> = vec![
        (one, DeviceArg::Cpu, "--gpus-per-task 0"),
        (cpu.clone(), DeviceArg::Cuda(0), "--gpus-per-task 1"),
        (
            SlurmOptions::default(),
            DeviceArg::Cuda(1),
            "numbered from 0",
        ),
        (
            SlurmOptions {
                time: "1:00".into(),
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "--term-before",
        ),
        (
            SlurmOptions {
                time: "soon".into(),
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "not a Slurm time limit",
        ),
        (
            SlurmOptions {
                mem: "lots".into(),
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "--mem",
        ),
        (
            SlurmOptions {
                partition: Some("gpu\n#SBATCH --x".into()),
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "--partition",
        ),
        (
            SlurmOptions {
                sbatch_extra: vec!["echo hi".into()],
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "--sbatch-extra",
        ),
        (
            SlurmOptions {
                sbatch_extra: vec!["--qos=a\n--x".into()],
                ..cpu.clone()
            },
            DeviceArg::Cpu,
            "one line",
        ),
    ];
    for (a, d, needle) in cases {
        let e = format!("{:#}", text(&a, d).unwrap_err());
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    let fwd: [String; 0] = [];
    let mut j = job(&fwd, DeviceArg::Auto);
    j.tasks = 0;
    let a = SlurmOptions::default();
    assert!(script(&a, &j, Path::new("/dka"), Path::new("/")).is_err());
    assert!(script(
        &a,
        &job(&fwd, DeviceArg::Auto),
        Path::new("/dka"),
        Path::new("/a\"b")
    )
    .is_err());
    let newline = ["--data".to_string(), "folder=a\nb".into()];
    let e = script(
        &a,
        &job(&newline, DeviceArg::Auto),
        Path::new("/dka"),
        Path::new("/"),
    );
    assert!(format!("{:#}", e.unwrap_err()).contains("line break"));
}

#[test]
fn time_limits_parse_like_slurm() {
    for (s, want) in [
        ("90", Some(5_400)),
        ("90:30", Some(5_430)),
        ("24:00:00", Some(86_400)),
        ("2-12", Some(216_000)),
        ("1-00:30", Some(88_200)),
        ("1-00:00:01", Some(86_401)),
        ("UNLIMITED", None),
        ("infinite", None),
    ] {
        assert_eq!(parse_time_limit(s).unwrap(), want, "{s}");
    }
    for bad in [
        "",
        "-1",
        "1:2:3:4",
        "1-",
        "a",
        "1-2:3:4:5",
        "1.5",
        "+5",
        "1--2",
    ] {
        assert!(parse_time_limit(bad).is_err(), "{bad}");
    }
    assert_eq!(format_time_limit(88_200), "1-00:30:00");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}

#[test]
fn emit_writes_the_script_and_the_log_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let fwd: [String; 0] = [];
    let j = Job {
        out: &out,
        ..job(&fwd, DeviceArg::Auto)
    };
    let p = emit(&SlurmOptions::default(), &j).unwrap();
    assert_eq!(p, out.join("grid.sbatch"));
    assert!(std::fs::read_to_string(&p)
        .unwrap()
        .starts_with("#!/bin/bash\n"));
    assert!(out.join("slurm").is_dir());
}
