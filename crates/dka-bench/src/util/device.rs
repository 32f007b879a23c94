//! Devices: the choice every command shares (`auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`),
//! their names, and what the C++ shim (`csrc/shim.cpp`) tells of a CUDA device (name, native
//! bf16, peak memory).
use anyhow::bail;
use tch::Device;

extern "C" {
    fn dka_cuda_device_name(device: i32, buf: *mut std::os::raw::c_char, len: i32) -> i32;
    fn dka_cuda_capability_major(device: i32) -> i32;
    fn dka_cuda_reset_peak(device: i32) -> i32;
    fn dka_cuda_peak_allocated(device: i32) -> i64;
}

/// The cores this process may use: `DKA_CORES` when set (a `dka grid --workers` worker's
/// share), else the machine's available parallelism.
pub fn cores() -> usize {
    std::env::var("DKA_CORES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceArg {
    /// CUDA device 0 when usable, else the CPU (the choice is logged).
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(format!(
                    "'{s}' is not a device: use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

pub fn pick(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(match arg {
        DeviceArg::Auto => {
            let d = Device::cuda_if_available();
            match (d, cuda_diagnosis()) {
                (Device::Cpu, Some(why)) => {
                    tracing::warn!("device auto: running on the CPU: {why}")
                }
                (Device::Cpu, None) => {
                    tracing::info!("device auto: no GPU here, running on the CPU")
                }
                _ => tracing::info!("device auto: cuda:0"),
            }
            d
        }
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda(i) => {
            if !tch::Cuda::is_available() {
                bail!(
                    "--device cuda:{i}: CUDA is not usable here: {}",
                    cuda_diagnosis().unwrap_or_else(|| "no NVIDIA GPU is visible to this process \
                        (no /dev/nvidia0; in a container, pass the GPU through)"
                        .into())
                );
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                bail!(
                    "--device cuda:{i}: this machine has {n} CUDA device(s) (0..{})",
                    n.saturating_sub(1)
                );
            }
            Device::Cuda(i)
        }
    })
}

/// The NVIDIA kernel driver's version (`/proc/driver/nvidia/version`), when a driver is loaded.
pub fn nvidia_driver() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    driver_version(&text)
}

/// The version in `/proc/driver/nvidia/version`'s text ("NVRM version: NVIDIA UNIX x86_64
/// Kernel Module  580.65.06  Sun Jul 27 ...").
fn driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| w.split('.').count() >= 2 && w.split('.').all(|p| p.parse::<u32>().is_ok()))
        .map(str::to_string)
}

/// Whether this process sees an NVIDIA GPU at all (device nodes or a loaded driver).
fn gpu_visible() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
        || std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// Why CUDA is not usable although an NVIDIA GPU is there, in one paragraph for the user;
/// `None` when CUDA works or no GPU is visible.
pub fn cuda_diagnosis() -> Option<String> {
    if tch::Cuda::is_available() || !gpu_visible() {
        return None;
    }
    Some(diagnose(
        nvidia_driver().as_deref(),
        option_env!("DKA_LIBTORCH_VERSION").unwrap_or("unknown"),
    ))
}

/// The driver a PyTorch wheel's CUDA needs: (CUDA version, minimum driver).
fn wheel_needs(wheel: &str) -> Option<(&'static str, &'static str, u32)> {
    let cuda = wheel.split('+').nth(1)?;
    match cuda {
        "cu130" => Some(("13.0", "580", 580)),
        c if c.starts_with("cu12") => Some(("12.x", "525.60", 525)),
        _ => None,
    }
}

/// The diagnosis for a GPU that CUDA cannot use: the driver seen, what the installed wheel
/// needs, and what to do.
fn diagnose(driver: Option<&str>, wheel: &str) -> String {
    let seen = driver.map_or(
        "the NVIDIA driver's version could not be read".to_string(),
        |v| format!("NVIDIA driver {v}"),
    );
    let fix = "run `just setup cuda=cu126` (CUDA 12.6: driver >= 525.60) and rebuild, or update \
               the driver; `just gpu-check` then says whether CUDA works";
    if wheel.ends_with("+cpu") {
        return format!(
            "an NVIDIA GPU is present ({seen}) but this build's PyTorch {wheel} is CPU-only: run \
             `just setup cuda=default` (CUDA 13.0, driver >= 580) or `just setup cuda=cu126`"
        );
    }
    let Some((cuda, min, min_major)) = wheel_needs(wheel) else {
        return format!(
            "an NVIDIA GPU is present ({seen}) but CUDA is not usable with PyTorch {wheel}; {fix}"
        );
    };
    let major = driver.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    let verdict = match major {
        Some(m) if m < min_major => "too old for it".to_string(),
        Some(_) => {
            "new enough, so the cause is elsewhere (is libtorch_cuda loaded? see `dka info`)"
                .to_string()
        }
        None => "which may be too old".to_string(),
    };
    format!(
        "an NVIDIA GPU is present ({seen}) but CUDA is not usable: this build's PyTorch {wheel} \
         needs CUDA {cuda}, i.e. driver >= {min}, and the driver is {verdict}; {fix}"
    )
}

/// `cpu`, `cuda:0`, ...
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Whether a CUDA device computes bf16 natively (compute capability 8.0, Ampere, or later).
pub fn cuda_bf16_native(device: Device) -> Option<bool> {
    let Device::Cuda(i) = device else {
        return None;
    };
    // SAFETY: plain C function of the shim.
    let major = unsafe { dka_cuda_capability_major(i as i32) };
    (major >= 0).then_some(major >= 8)
}

/// Whether this CPU computes bf16 natively (AVX512-BF16 or AMX in /proc/cpuinfo's flags);
/// `false` where that file is unreadable.
pub fn cpu_bf16_native() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
        s.lines().filter(|l| l.starts_with("flags")).any(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
    })
}

/// The name of a CUDA device (e.g. "NVIDIA H200"), `None` on the CPU or when unavailable.
pub fn cuda_device_name(device: Device) -> Option<String> {
    let Device::Cuda(i) = device else {
        return None;
    };
    let mut buf = vec![0u8; 256];
    // SAFETY: the shim writes at most `len` bytes, NUL-terminated.
    let rc = unsafe { dka_cuda_device_name(i as i32, buf.as_mut_ptr().cast(), buf.len() as i32) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Resets the peak-memory statistic of `device` (CUDA: the caching allocator's; CPU: nothing,
/// the resident-set peak of a process cannot be reset).
pub fn reset_peak_memory(device: Device) {
    if let Device::Cuda(i) = device {
        // SAFETY: plain C function of the shim.
        unsafe {
            dka_cuda_reset_peak(i as i32);
        }
    }
}

/// Peak memory in bytes: on CUDA the peak allocated by tensors since the last reset; on the
/// CPU the process's peak resident set (`VmHWM`). `None` when unavailable.
pub fn peak_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(i) => {
            // SAFETY: plain C function of the shim.
            let b = unsafe { dka_cuda_peak_allocated(i as i32) };
            u64::try_from(b).ok()
        }
        _ => proc_status_bytes("VmHWM"),
    }
}

/// Resident set (`VmRSS`) or its high-water mark (`VmHWM`) of this process, bytes.
/// Minor page faults of this process so far (`/proc/self/stat`, field 10): each one is a page
/// the kernel had to map (and zero) on first touch.
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments_parse() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        assert!("cuda:x".parse::<DeviceArg>().is_err());
        assert!("tpu".parse::<DeviceArg>().is_err());
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
        assert!(peak_memory(Device::Cpu).unwrap() > 0);
        assert_eq!(cuda_bf16_native(Device::Cpu), None);
    }

    #[test]
    fn a_gpu_that_cuda_cannot_use_is_explained() {
        let proc = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0";
        assert_eq!(driver_version(proc).as_deref(), Some("535.104.05"));
        let old = diagnose(Some("535.104.05"), "2.11.0+cu130");
        assert!(
            old.contains("driver >= 580") && old.contains("too old"),
            "{old}"
        );
        assert!(old.contains("just setup cuda=cu126"), "{old}");
        let new = diagnose(Some("580.65.06"), "2.11.0+cu130");
        assert!(new.contains("new enough"), "{new}");
        let cpu = diagnose(Some("580.65.06"), "2.11.0+cpu");
        assert!(cpu.contains("CPU-only"), "{cpu}");
        let cu12 = diagnose(Some("470.1"), "2.11.0+cu126");
        assert!(
            cu12.contains("driver >= 525.60") && cu12.contains("too old"),
            "{cu12}"
        );
    }
}
