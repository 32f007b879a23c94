//! Flags several subcommands share: where the data, weights, device and cache are.
use crate::config::sources::Sources;
use crate::util::device::DeviceArg;
use std::path::PathBuf;

/// Where each dataset's release folder is, the weights, the device.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// A dataset's folder, `NAME=PATH` (repeatable), e.g. `--data busi-cls=~/data/Dataset_BUSI_with_GT`.
    #[arg(long = "data", value_name = "NAME=PATH")]
    pub data: Vec<String>,
    /// A folder holding one sub-folder per dataset name (used for names not given by --data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Pretrained backbone weights (.safetensors) for every run, `none` for the
    /// random-initialisation control, or `BACKBONE=FILE` for the runs of one backbone
    /// (repeatable: `--weights resnet50=rad.safetensors --weights medsam_vit_b=medsam.safetensors`).
    #[arg(long, value_name = "FILE|none|BACKBONE=FILE")]
    pub weights: Vec<String>,
    /// auto (CUDA when usable, else CPU; logged), cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// Cache folder (file hashes; decoded images), shared safely by concurrent runs
    /// [default: results/.cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl DataArgs {
    pub fn sources(&self) -> Sources {
        Sources {
            data: self.data.clone(),
            data_dir: self.data_dir.clone(),
            weights: self.weights.clone(),
            device: self.device,
            cache_dir: self.cache_dir.clone(),
        }
    }
}
