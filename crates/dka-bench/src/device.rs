//! Device choice shared by the subcommands: `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
use anyhow::bail;
use tch::Device;

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
    }
}
