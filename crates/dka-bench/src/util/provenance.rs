//! Where and how numbers were made, for the sidecars of results files and the grids'
//! `experiment.json`: the machine, libtorch, the GPU, the commit (and whether the code
//! differed from it), the time.
use crate::util::device::cuda_device_name;

/// The checked-out commit, `+ uncommitted changes` when the code (`crates/`, `benches/`,
/// `experiments/`, `scripts/`) differs from it: the numbers then come from a build that no
/// commit holds.
pub fn git_commit() -> Option<String> {
    let git = |args: &[&str]| std::process::Command::new("git").args(args).output().ok();
    let head = git(&["rev-parse", "--short", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let dirty = git(&[
        "diff",
        "--quiet",
        "HEAD",
        "--",
        "crates",
        "benches",
        "experiments",
        "scripts",
    ])
    .is_some_and(|o| o.status.code() == Some(1));
    Some(if dirty {
        format!("{head} + uncommitted changes")
    } else {
        head
    })
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
    })
}

/// How and where numbers were made, for the sidecars of results files.
pub fn machine() -> serde_json::Value {
    serde_json::json!({
        "cpu": cpu_model(),
        "libtorch_threads": tch::get_num_threads(),
        "libtorch": option_env!("DKA_LIBTORCH_VERSION"),
        "cuda": tch::Cuda::is_available(),
        "gpu": cuda_device_name(tch::Device::cuda_if_available()),
        "dka_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(),
        "date_utc": now_utc(),
    })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// Seconds since 1970 as an ISO-8601 UTC time (Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
