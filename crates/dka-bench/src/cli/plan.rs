//! `dka plan EXP...`: the runs of one or more grids still to do and an estimate of their time
//! on this device, before anything runs.
use super::args::DataArgs;
use crate::config::experiment::Experiment;
use crate::grid::estimate::Plan;
use crate::grid::plan::{plan_grids, PlanOptions};
use crate::util::device::pick;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Experiment files (experiments/*.toml); their plans are summed.
    #[arg(required = true)]
    pub experiments: Vec<PathBuf>,
    /// Profile of the experiments.
    #[arg(long)]
    pub profile: Option<String>,
    /// Output folder of the grid (to see which runs are done; plan.csv goes there).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Timed steps per distinct model (0: count runs and FLOPs only, time nothing).
    #[arg(long, default_value_t = 2)]
    pub plan_steps: usize,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Prints a plan (and where its CSV went).
pub fn print(plan: &Plan, out: Option<&Path>) {
    for line in plan.lines() {
        println!("{line}");
    }
    if let Some(o) = out {
        println!("plan: {} (+ .json)", o.join("plan.csv").display());
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let exps: Vec<(&Path, Experiment)> = a
        .experiments
        .iter()
        .map(|p| Ok((p.as_path(), Experiment::load(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let opts = PlanOptions {
        profile: a.profile.clone(),
        out: a.out.clone(),
        plan_steps: a.plan_steps,
        sources: a.data.sources(),
    };
    let plan = plan_grids(&exps, &opts, pick(a.data.device)?)?;
    print(&plan, opts.out.as_deref());
    Ok(())
}
