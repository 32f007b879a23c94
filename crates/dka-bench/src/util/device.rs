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
            if d == Device::Cpu {
                tracing::info!("device auto: CUDA is not usable here, running on the CPU");
            } else {
                tracing::info!("device auto: cuda:0");
            }
            d
        }
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda(i) => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda:{i}: CUDA is not usable here (see `dka info`: a CUDA wheel that does not match the driver falls back to the CPU)");
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
}
