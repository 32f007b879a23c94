//! `dka bench`: DKA's convolutions, the data path, and a training step against PyTorch.
use crate::perf::conv::ConvOptions;
use crate::perf::data::DataOptions;
use crate::perf::steps::StepsOptions;
use crate::util::device::DeviceArg;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// DKA's depthwise convolutions: plain reference vs the exact fast path.
    Conv(ConvArgs),
    /// The data path: images/s uncached vs the decoded cache (ISIC-2019-like JPEGs, BraTS-like volumes).
    Data(DataArgs),
    /// One training step side by side with a PyTorch-eager reference (time, GFLOP/s, peak
    /// memory, loss parity): results/bench/steps.csv.
    Steps(StepsArgs),
    /// Internal: one implementation of a `bench steps` case, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Conv(a) => crate::perf::conv::run(&a.options()),
        Command::Data(a) => crate::perf::data::run(&a.options()),
        Command::Steps(a) => crate::perf::steps::run(a.options()),
        Command::Worker => crate::perf::steps::server::serve(),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConvArgs {
    /// CSV to write.
    #[arg(long, default_value = "results/bench/dka_conv.csv")]
    pub output: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Timed repetitions per path (2 when one pass takes over two seconds).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Large and small kernel sizes.
    #[arg(long, default_value_t = 51)]
    pub large: i64,
    #[arg(long, default_value_t = 5)]
    pub small: i64,
    /// Skip the ViT-B/16 training-step rows (DKA vs the Adapter baseline).
    #[arg(long)]
    pub no_step: bool,
}

impl ConvArgs {
    pub fn options(&self) -> ConvOptions {
        ConvOptions {
            output: self.output.clone(),
            batch: self.batch,
            reps: self.reps,
            large: self.large,
            small: self.small,
            no_step: self.no_step,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// CSV to write (a `.meta.json` is written next to it).
    #[arg(long, default_value = "results/bench/data.csv")]
    pub output: PathBuf,
    /// ISIC-2019-like JPEGs to make.
    #[arg(long, default_value_t = 320)]
    pub images: usize,
    /// Their width and height.
    #[arg(long, default_value_t = 1024)]
    pub width: u32,
    #[arg(long, default_value_t = 768)]
    pub height: u32,
    /// Network input size (square).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Later (cached) epochs measured; their mean is reported.
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    /// BraTS-like cases to make (0: skip BraTS).
    #[arg(long, default_value_t = 20)]
    pub brats_cases: usize,
    /// Their volume size, `XxYxZ`.
    #[arg(long, default_value = "240x240x155", value_parser = crate::perf::data::parse_dims)]
    pub brats_dims: [usize; 3],
    /// Slices the uncached BraTS epoch is timed on (then extrapolated to the whole epoch).
    #[arg(long, default_value_t = 96)]
    pub brats_uncached_slices: usize,
    /// Loader threads (default: cores - 1).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Folder for the synthetic data and caches (default: a new one under the system's
    /// temporary folder, removed at the end).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
}

impl DataArgs {
    pub fn options(&self) -> DataOptions {
        DataOptions {
            output: self.output.clone(),
            images: self.images,
            width: self.width,
            height: self.height,
            size: self.size,
            epochs: self.epochs,
            brats_cases: self.brats_cases,
            brats_dims: self.brats_dims,
            brats_uncached_slices: self.brats_uncached_slices,
            threads: self.threads,
            batch: self.batch,
            workdir: self.workdir.clone(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct StepsArgs {
    /// CSV to write (a `.meta.json` and a `.png` go next to it).
    #[arg(long, default_value = "results/bench/steps.csv")]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Timed interleaved rounds per case (3 when a reference step takes over 20 s on the CPU).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed steps whose losses both implementations must agree on (the first one also
    /// warms up and counts the reference's FLOPs).
    #[arg(long, default_value_t = 2)]
    pub parity_steps: usize,
    /// Largest accepted loss difference, relative to max(1, |reference loss|).
    #[arg(long, default_value_t = 1e-4)]
    pub loss_tol: f64,
    /// Only the cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// fp32 and/or bf16 (comma-separated): bf16 runs both implementations' forward in bf16
    /// autocast (CUDA, or a CPU with native bf16: AVX512-BF16 or AMX); its cases are named
    /// `… bf16` and its losses must agree within --loss-tol-bf16.
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = parse_precision)]
    pub precision: Vec<crate::config::run::Precision>,
    /// Largest accepted loss difference of a bf16 case, relative to max(1, |reference loss|).
    #[arg(long, default_value_t = 3e-2)]
    pub loss_tol_bf16: f64,
    /// Tiny models instead of the paper's (seconds; for checking the bench itself).
    #[arg(long)]
    pub quick: bool,
    /// The Python of the reference (with torch, timm, safetensors).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// The reference implementation.
    #[arg(long, default_value = "benches/reference/steps.py")]
    pub reference: PathBuf,
    /// Skip the bar chart.
    #[arg(long)]
    pub no_plot: bool,
    /// Threads of each implementation (OMP_NUM_THREADS and MKL_NUM_THREADS of the workers);
    /// default: libtorch's (the CPU cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep subnormal floats. By default both implementations flush them to zero
    /// (`torch.set_flush_denormal(True)`): arithmetic on subnormals is many times slower on
    /// x86 and whether a step meets them depends on the weights and data (the reference's
    /// depthwise convolutions met them in the first steps from random weights, 8x slower).
    #[arg(long)]
    pub keep_subnormals: bool,
    /// Instead of timing: profile each selected case (after its parity steps), each
    /// implementation under its own profiler for --profile-steps steps; writes the Chrome
    /// traces (`DIR/<case>-<impl>.json`, for Perfetto or chrome://tracing) and the operators'
    /// self times per step side by side (`DIR/<case>.csv`, the largest excess of this project
    /// first).
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Steps each implementation runs under the profiler (--profile).
    #[arg(long, default_value_t = 3)]
    pub profile_steps: usize,
}

impl StepsArgs {
    pub fn options(&self) -> StepsOptions {
        StepsOptions {
            output: self.output.clone(),
            device: self.device,
            reps: self.reps,
            parity_steps: self.parity_steps,
            loss_tol: self.loss_tol,
            loss_tol_bf16: self.loss_tol_bf16,
            precisions: self.precision.clone(),
            cases: self.cases.clone(),
            quick: self.quick,
            python: self.python.clone(),
            reference: self.reference.clone(),
            no_plot: self.no_plot,
            threads: self.threads,
            keep_subnormals: self.keep_subnormals,
            profile: self.profile.clone(),
            profile_steps: self.profile_steps,
        }
    }
}

fn parse_precision(s: &str) -> Result<crate::config::run::Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("'{s}' is not a precision: use fp32 or bf16"))
}
