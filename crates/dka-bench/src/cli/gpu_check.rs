//! `dka gpu-check`: what this build does on the machine's GPU, in one CSV.
use crate::perf::gpu_check::{check, GpuCheckOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The CSV to write.
    #[arg(long, default_value = "results/gpu/check.csv")]
    pub out: PathBuf,
    /// Parity fixtures (`just fixtures`): folders with config.json, model.safetensors and
    /// io.safetensors (input and the reference library's features).
    #[arg(long, default_value = "fixtures")]
    pub fixtures: PathBuf,
    /// Batch size of the ViT-B/16 training steps.
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    /// Timed steps per method (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The CUDA device to check.
    #[arg(long, default_value_t = 0)]
    pub cuda: usize,
    /// Skip the two-epoch grid.
    #[arg(long)]
    pub no_grid: bool,
    /// Backbone of the training steps.
    #[arg(long, default_value = "vit_base_patch16_224")]
    pub backbone: String,
    /// Without CUDA, run the training steps and the grid on the CPU too (fp32; slow with
    /// ViT-B: for testing this command with a small --backbone).
    #[arg(long)]
    pub cpu_steps: bool,
}

impl Args {
    pub fn options(&self) -> GpuCheckOptions {
        GpuCheckOptions {
            out: self.out.clone(),
            fixtures: self.fixtures.clone(),
            batch: self.batch,
            steps: self.steps,
            cuda: self.cuda,
            no_grid: self.no_grid,
            backbone: self.backbone.clone(),
            cpu_steps: self.cpu_steps,
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let o = a.options();
    if !(tch::Cuda::is_available() && (o.cuda as i64) < tch::Cuda::device_count()) {
        println!("CUDA is not usable here: running the CPU part only (see `dka info`).");
    }
    let rows = check(&o)?;
    for r in &rows {
        println!("{}", r.line());
    }
    println!("wrote {}", o.out.display());
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.failed())
        .map(|r| format!("{} {} {} {}", r.section, r.item, r.device, r.precision))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} check(s) failed: {}",
        failed.len(),
        failed.join("; ")
    );
    Ok(())
}
