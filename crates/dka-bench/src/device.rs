//! Device choice shared by the subcommands.
use anyhow::bail;
use tch::Device;

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when usable, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

pub fn pick(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(match arg {
        DeviceArg::Auto => Device::cuda_if_available(),
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: CUDA is not usable here (see `dka info`)");
            }
            Device::Cuda(0)
        }
    })
}
