//! `dka inspect RUN|GRID…`: what the trained modules do (change of their input, DKA's branch
//! norms, the large kernel's energy by radius, at initialisation and trained).
use super::args::DataArgs;
use crate::analysis::inspect::{inspect, InspectOptions};
use crate::util::device::pick;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "Writes modules.csv (one row per module application: ‖f(x) − x‖/‖x‖ on \
test images; DKA: the large and small branches' output norms), kernels.csv (one row per DKA \
module: the share of the large kernel's energy beyond Chebyshev radius 2 and beyond the token \
grid's reach, at initialisation and trained) and summary.txt."
)]
pub struct Args {
    /// Run folders (`dka train --out`, a grid's `runs/<id>`) or grid folders (their runs).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Test images the activations are measured on.
    #[arg(long, default_value_t = 16)]
    pub images: usize,
    /// Output folder [default: <first path>/inspect].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Of a grid's runs, only those whose axis has this value, `AXIS=VALUE` (repeatable; an
    /// axis given twice matches either value), e.g. `--where draw=0 --where "backbone=DINOv2-S (natural)"`.
    #[arg(long = "where", value_name = "AXIS=VALUE")]
    pub filter: Vec<String>,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = pick(a.data.device)?;
    let o = InspectOptions {
        paths: a.paths,
        images: a.images,
        out: a.out,
        filter: crate::analysis::AxisFilter::parse(&a.filter)?,
        sources: a.data.sources(),
    };
    let (out, summary) = inspect(&o, device)?;
    for l in &summary {
        println!("{l}");
    }
    println!("modules.csv, kernels.csv, summary.txt in {}", out.display());
    Ok(())
}
