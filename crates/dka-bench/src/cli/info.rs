//! `dka info`: what this binary computes on.
use crate::util::device::{pick, DeviceArg};

#[derive(clap::Args)]
pub struct Args {
    /// Device to report as the one runs would use.
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    device: DeviceArg,
    /// Also measure how fast the device is right now (a few seconds): GEMM throughput (fp32, and
    /// bf16 where it is native) and the latency of a small operation, which bounds the demo's
    /// small steps. Shared machines drift; `just demo` records this at its start and end.
    #[arg(long)]
    speed: bool,
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
    println!(
        "nvidia driver: {}",
        crate::util::device::nvidia_driver().unwrap_or_else(|| "none seen".into())
    );
    if let Some(why) = crate::util::device::cuda_diagnosis() {
        println!("warning: {why}");
    }
    if cuda {
        println!("cuda devices: {}", tch::Cuda::device_count());
        for i in 0..tch::Cuda::device_count() as usize {
            println!(
                "cuda:{i}: {} (bf16 native: {})",
                crate::util::device::cuda_device_name(tch::Device::Cuda(i)).unwrap_or_default(),
                crate::util::device::cuda_bf16_native(tch::Device::Cuda(i))
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
    if args.speed {
        println!("speed now: {}", crate::perf::speed::now(device));
    }
    Ok(())
}
