//! `dka plan EXP...` (and `dka grid --plan`): the runs of one or more grids still to do and an
//! estimate of their time on this device (see [`crate::plan`]).
use crate::device::pick;
use crate::experiment::Experiment;
use crate::grid::runs_csv;
use crate::grid_cmd::{plan, Planned};
use crate::run_cmd::DataArgs;
use crate::run_config::RunConfig;
use dka_data::Dataset;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Experiment files (experiments/*.toml); their plans are summed.
    #[arg(required = true)]
    experiments: Vec<PathBuf>,
    #[command(flatten)]
    opts: PlanOptions,
}

#[derive(clap::Args, Clone)]
pub struct PlanOptions {
    /// Profile of the experiments.
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Output folder of the grid (to see which runs are done; plan.csv goes there).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Timed steps per distinct model (0: count runs and FLOPs only, time nothing).
    #[arg(long, default_value_t = 2)]
    pub(crate) plan_steps: usize,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

/// Seconds to decode one sample of `ds` (a few samples timed).
fn decode_seconds(ds: &dyn Dataset, indices: &[usize]) -> f64 {
    let take: Vec<usize> = indices.iter().copied().take(4).collect();
    if take.is_empty() {
        return 0.0;
    }
    let t = std::time::Instant::now();
    let ok = take.iter().filter(|&&i| ds.read(i).is_ok()).count().max(1);
    t.elapsed().as_secs_f64() / ok as f64
}

/// The sizes of a planned run's splits and the decoding its uncached splits still need.
fn measured_sizes(
    p: &Planned,
    decode_s: &mut HashMap<String, f64>,
) -> anyhow::Result<crate::plan::Sizes> {
    let task = p.data.ds.task();
    let spec = p.cfg.input_spec()?;
    let pre = crate::train::data::preprocess(&p.cfg, &spec);
    let per_image = *decode_s
        .entry(p.cfg.dataset.clone())
        .or_insert_with(|| decode_seconds(p.data.ds.as_ref(), &p.data.split.train));
    let mut decode = 0.0;
    for which in [
        dka_data::SplitName::Train,
        dka_data::SplitName::Val,
        dka_data::SplitName::Test,
    ] {
        let idx = p.data.indices(which);
        if idx.is_empty() {
            continue;
        }
        let key = dka_data::CacheKey::new(p.data.ds.as_ref(), idx, &pre, &p.data.manifest)?;
        if !p
            .data
            .cache_dir
            .join(key.short())
            .join("meta.json")
            .is_file()
        {
            decode += idx.len() as f64 * per_image;
        }
    }
    Ok(crate::plan::Sizes {
        train: p.data.split.train.len(),
        val: p.data.split.val.len(),
        test: p.data.split.test.len(),
        classes: task.classes().len() as i64,
        segmentation: task.is_segmentation(),
        decode_s: decode,
        nominal: false,
    })
}

/// Plans (and times) the runs of several grids still to do.
pub(crate) fn plan_grids(
    exps: &[(&Path, Experiment)],
    a: &PlanOptions,
    device: Device,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let (mut total, mut done) = (0, 0);
    for (path, exp) in exps {
        let specs = exp.runs(a.profile.as_deref())?;
        total += specs.len();
        let configs: Vec<RunConfig> = specs
            .iter()
            .map(|s| Ok(a.data.resolve(serde_json::from_value(s.config.clone())?)))
            .collect::<anyhow::Result<_>>()?;
        let have_data = configs
            .iter()
            .all(|c| a.data.root(&c.dataset).is_ok_and(|r| r.is_dir()));
        let mut todo: Vec<(RunConfig, crate::plan::Sizes)> = Vec::new();
        if have_data {
            let out = a.out.clone().unwrap_or_else(|| {
                PathBuf::from("results").join(match &a.profile {
                    Some(p) => format!("{}-{p}", exp.name),
                    None => exp.name.clone(),
                })
            });
            let (specs, planned) = plan(specs, &a.data, device)?;
            let mut decode = HashMap::new();
            for s in &specs {
                let dir = out.join("runs").join(&s.id);
                if runs_csv::read_record(&dir).is_some_and(|r| r.status == runs_csv::Status::Ok) {
                    done += 1;
                    continue;
                }
                let p = &planned[&s.id];
                todo.push((p.cfg.clone(), measured_sizes(p, &mut decode)?));
            }
        } else {
            tracing::warn!(
                "{}: some dataset folders are absent; planning with the releases' nominal sizes",
                path.display()
            );
            for c in configs {
                let sizes = crate::plan::nominal_sizes(&c)?;
                todo.push((c, sizes));
            }
        }
        rows.extend(crate::plan::estimate(
            &exp.name,
            &todo,
            device,
            a.plan_steps,
        )?);
    }
    let out = match (&a.out, exps.len()) {
        (Some(o), _) => Some(o.join("plan.csv")),
        _ => None,
    };
    crate::plan::report(&rows, device, total, done, out.as_deref())
}

/// `dka plan EXP...`: the runs of the grids still to do and their estimated time here.
pub fn plan_cmd(a: PlanArgs) -> anyhow::Result<()> {
    let exps: Vec<(&Path, Experiment)> = a
        .experiments
        .iter()
        .map(|p| Ok((p.as_path(), Experiment::load(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let device = pick(a.opts.data.device)?;
    plan_grids(&exps, &a.opts, device)
}
