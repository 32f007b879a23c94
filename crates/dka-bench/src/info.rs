//! `dka info`: what this binary computes on.
use crate::device::{pick, DeviceArg};

#[derive(clap::Args)]
pub struct Args {
    /// Device to report as the one runs would use.
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    device: DeviceArg,
}

/// The path of a shared library this process has loaded (from /proc/self/maps).
fn loaded(lib: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        l.split_whitespace()
            .last()
            .filter(|p| p.ends_with(lib))
            .map(str::to_owned)
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = pick(args.device)?;
    let cuda = tch::Cuda::is_available();
    println!("device: {device:?}");
    println!("cpu threads (libtorch): {}", tch::get_num_threads());
    println!(
        "libtorch built against: {}",
        option_env!("DKA_LIBTORCH_VERSION").unwrap_or("unknown")
    );
    println!(
        "libtorch loaded from: {}",
        loaded("/libtorch_cpu.so").unwrap_or_else(|| "unknown".into())
    );
    // Linked with --no-as-needed by build/libtorch_link.rs; without it CUDA silently vanishes.
    println!(
        "libtorch_cuda loaded: {}",
        loaded("/libtorch_cuda.so").is_some()
    );
    println!("cuda usable: {cuda}");
    if cuda {
        println!("cuda devices: {}", tch::Cuda::device_count());
        for i in 0..tch::Cuda::device_count() as usize {
            println!(
                "cuda:{i}: {} (bf16 native: {})",
                crate::precision::cuda_device_name(tch::Device::Cuda(i)).unwrap_or_default(),
                crate::precision::cuda_bf16_native(tch::Device::Cuda(i))
                    .map_or("unknown".to_string(), |b| b.to_string())
            );
        }
        println!(
            "cudnn: {} (version {})",
            tch::Cuda::cudnn_is_available(),
            tch::utils::version_cudnn()
        );
        println!("cuda runtime version: {}", tch::utils::version_cudart());
    }
    Ok(())
}

/// The checked-out commit, `+ uncommitted changes` when the code (`crates/`, `benches/`,
/// `experiments/`, `scripts/`) differs from it: the numbers then come from a build that no
/// commit holds.
fn git_commit() -> Option<String> {
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

/// How and where numbers were made, for the sidecars of results files.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
    });
    serde_json::json!({
        "cpu": cpu,
        "libtorch_threads": tch::get_num_threads(),
        "libtorch": option_env!("DKA_LIBTORCH_VERSION"),
        "cuda": tch::Cuda::is_available(),
        "gpu": crate::precision::cuda_device_name(tch::Device::cuda_if_available()),
        "dka_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(),
        "date_utc": std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
    })
}
