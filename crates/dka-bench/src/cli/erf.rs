//! `dka erf`: the effective receptive field of a trained run, a method at initialisation, or a
//! grid's runs (see [`crate::analysis::erf`]).
use crate::analysis::erf::{ErfOptions, Subject};
use crate::config::sources::Sources;
use crate::util::device::DeviceArg;
use anyhow::bail;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A trained run's folder (`dka train --out`, or a grid's `runs/<id>`).
    #[arg(long, conflicts_with_all = ["method", "grid"])]
    pub run: Option<PathBuf>,
    /// A method at initialisation: a name (`dka`, `adapter`, ...) or a JSON method config
    /// (`{"name": "dka", "d_hat": 16}`); needs --backbone (and --weights, --dataset).
    #[arg(long, conflicts_with = "grid")]
    pub method: Option<String>,
    /// A grid's folder: the ERF of each of its runs whose method is in --methods (one draw).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// With --grid: the methods (by method name) whose runs are measured.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "adapter,dka,lora,convpass"
    )]
    pub methods: Vec<String>,
    /// With --grid: also each method at initialisation (its run's config, nothing loaded).
    #[arg(long)]
    pub init: bool,
    /// With --grid: only runs whose grid axis has this value, `AXIS=VALUE` (repeatable; an axis
    /// given twice matches either value), e.g.
    /// `--where "backbone=DINOv2-S (natural)"`.
    #[arg(long = "where", value_name = "AXIS=VALUE")]
    pub filter: Vec<String>,
    /// With --grid: which draw (default: the smallest present).
    #[arg(long)]
    pub draw: Option<u32>,
    /// Backbone preset or JSON config (--method; with --run it comes from config.json).
    #[arg(long)]
    pub backbone: Option<String>,
    /// Backbone weights (.safetensors) or `none`; with --run/--grid, overrides config.json's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The dataset whose test images are used (--method; default: the one --data names).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Input size (--method; default 224).
    #[arg(long)]
    pub img_size: Option<u32>,
    /// A dataset's folder, `NAME=PATH` (repeatable, or comma-separated).
    #[arg(long = "data", value_name = "NAME=PATH", value_delimiter = ',')]
    pub data: Vec<String>,
    /// A folder holding one sub-folder per dataset name.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Test images to average over (fewer when the split has fewer).
    #[arg(long, default_value_t = 50)]
    pub images: usize,
    /// Images per backward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t)]
    pub device: DeviceArg,
    /// Cache folder (file hashes, decoded images) [default: results/.cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl Args {
    pub fn options(&self) -> anyhow::Result<ErfOptions> {
        let subject = match (&self.run, &self.method, &self.grid) {
            (Some(run), _, _) => Subject::Run(run.clone()),
            (None, Some(m), _) => Subject::Method {
                method: m.clone(),
                backbone: self.backbone.clone(),
                dataset: self.dataset.clone(),
                img_size: self.img_size,
            },
            (None, None, Some(g)) => Subject::Grid {
                grid: g.clone(),
                methods: self.methods.clone(),
                filter: self.filter.clone(),
                draw: self.draw,
                init: self.init,
            },
            (None, None, None) => {
                bail!("say what to measure: --run DIR, --method NAME or --grid DIR")
            }
        };
        Ok(ErfOptions {
            subject,
            weights: self.weights.clone(),
            images: self.images,
            batch: self.batch,
            out: self.out.clone(),
            sources: Sources {
                data: self.data.clone(),
                data_dir: self.data_dir.clone(),
                weights: Vec::new(),
                device: self.device,
                cache_dir: self.cache_dir.clone(),
            },
        })
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let o = a.options()?;
    let (measured, figure) = crate::analysis::erf::run(&o)?;
    for m in &measured {
        for r in &m.rows {
            println!(
                "{} {}: t = {}: area ratio {}",
                m.target.label,
                m.target.fraction,
                r.t,
                r.area_ratio.map_or("–".into(), |x| format!("{x:.4}"))
            );
        }
    }
    if let Some(p) = figure {
        println!("wrote {}", p.display());
    }
    println!("wrote {}", o.out.display());
    Ok(())
}
