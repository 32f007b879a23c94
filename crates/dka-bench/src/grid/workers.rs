//! `dka grid --workers N`: N worker processes on one machine running one grid together. Each
//! worker is `dka grid … --worker` on the same output folder: it walks the whole grid in
//! order and takes every run no other worker holds (the per-run lock and the `result.json`
//! done files that make Slurm shards safe), so the runs are shared out as they finish, each
//! runs once, and a stopped grid resumes. On the CPU the cores are split between the workers
//! (libtorch and loader threads, `DKA_CORES`); with CUDA each worker gets one device. This
//! process draws one bar for the grid, forwards a stop signal to the workers, reports a worker
//! that dies (its run has no `result.json` and is resumed by the next grid) and writes the
//! table once they are done.
use crate::config::record::read_record;
use crate::config::spec::RunSpec;
use crate::util::device::DeviceArg;
use anyhow::Context;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where each worker runs: a device, and the cores it may use (CPU workers).
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub device: DeviceArg,
    pub cores: Option<usize>,
}

/// `workers` slots: with `devices` given (CUDA), one worker per device (`workers`, when set,
/// must not exceed them); on the CPU the cores are split as evenly as they go, at least one
/// each.
pub fn slots(workers: usize, devices: &[DeviceArg], cores: usize) -> anyhow::Result<Vec<Slot>> {
    if !devices.is_empty() {
        let n = if workers == 0 { devices.len() } else { workers };
        anyhow::ensure!(
            n <= devices.len(),
            "--workers {n} with {} device(s): one worker per device",
            devices.len()
        );
        return Ok(devices[..n]
            .iter()
            .map(|d| Slot {
                device: *d,
                cores: None,
            })
            .collect());
    }
    let n = workers.max(1);
    anyhow::ensure!(
        n <= cores,
        "--workers {n} on {cores} core(s): at most one worker per core"
    );
    Ok((0..n)
        .map(|i| Slot {
            device: DeviceArg::Cpu,
            cores: Some(cores / n + usize::from(i < cores % n)),
        })
        .collect())
}

/// How the workers ended.
#[derive(Debug, Default)]
pub struct WorkersOutcome {
    /// (worker, its slot, how it ended) of each worker that did not exit cleanly.
    pub died: Vec<(usize, String, String)>,
}

/// Runs `args` (a `dka grid` command line without the device) as one worker per slot and
/// waits for them, drawing progress over `specs` from their done files under `out/runs/`.
pub fn run(
    args: &[String],
    slots: &[Slot],
    out: &Path,
    specs: &[RunSpec],
) -> anyhow::Result<WorkersOutcome> {
    let exe = std::env::current_exe().context("the dka executable")?;
    let done = || {
        specs
            .iter()
            .filter(|s| read_record(&out.join("runs").join(&s.id)).is_some())
            .count()
    };
    let bar = crate::util::progress::bar(specs.len() as u64, "runs");
    bar.set_position(done() as u64);
    let mut children: Vec<(Child, String)> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        let mut c = Command::new(&exe);
        c.args(args)
            .args(["--worker", "--device", &s.device.to_string()])
            .env("DKA_NO_BARS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut what = s.device.to_string();
        if let Some(k) = s.cores {
            c.env("DKA_CORES", k.to_string())
                .env("OMP_NUM_THREADS", k.to_string());
            what = format!("{k} core(s)");
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting worker {i} ({what})"))?;
        tracing::info!("worker {i}: pid {} on {what}", child.id());
        children.push((child, what));
    }
    let mut outcome = WorkersOutcome::default();
    let mut running: Vec<Option<(Child, String)>> = children.into_iter().map(Some).collect();
    let mut forwarded = false;
    while running.iter().any(Option::is_some) {
        if let (Some(sig), false) = (crate::util::interrupt::requested(), forwarded) {
            forwarded = true;
            for (child, _) in running.iter().flatten() {
                // The workers checkpoint their runs and stop, as one process would.
                let _ = Command::new("kill")
                    .args([format!("-{sig}"), child.id().to_string()])
                    .status();
            }
        }
        for (i, slot) in running.iter_mut().enumerate() {
            let Some((child, what)) = slot.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                if !status.success() && !forwarded {
                    let how = status.code().map_or_else(
                        || "killed by a signal".to_string(),
                        |c| format!("exit status {c}"),
                    );
                    bar.suspend(|| {
                        tracing::warn!(
                            "worker {i} ({what}) stopped ({how}); its run in progress is left to a resume"
                        )
                    });
                    outcome.died.push((i, what.clone(), how));
                }
                *slot = None;
            }
        }
        bar.set_position(done() as u64);
        std::thread::sleep(Duration::from_millis(250));
    }
    crate::util::progress::done(&bar);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_split_and_devices_get_one_worker_each() {
        let s = slots(2, &[], 2).unwrap();
        assert_eq!(
            s.iter().map(|s| s.cores).collect::<Vec<_>>(),
            [Some(1), Some(1)]
        );
        let s = slots(3, &[], 8).unwrap();
        assert_eq!(s.iter().map(|s| s.cores.unwrap()).sum::<usize>(), 8);
        assert!(slots(3, &[], 2).is_err());
        let d = [DeviceArg::Cuda(0), DeviceArg::Cuda(1)];
        assert_eq!(slots(0, &d, 16).unwrap().len(), 2);
        assert_eq!(slots(1, &d, 16).unwrap()[0].device, DeviceArg::Cuda(0));
        assert!(slots(3, &d, 16).is_err());
    }
}
