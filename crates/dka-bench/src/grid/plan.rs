//! `dka plan EXP...` (and `dka grid --plan`): the runs of one or more grids still to do and an
//! estimate of their time on this device (see [`super::estimate`]).
use super::estimate::{nominal_sizes, Plan, Sizes};
use super::experiment::default_out;
use super::resolve::{resolve_runs, Resolved};
use crate::config::experiment::Experiment;
use crate::config::record::{read_record, Status};
use crate::config::run::RunConfig;
use crate::config::sources::Sources;
use dka_data::Dataset;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Device;

/// What to plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The experiments' profile.
    pub profile: Option<String>,
    /// The output folder of the grid (to see which runs are done; `plan.csv` goes there).
    pub out: Option<PathBuf>,
    /// Timed steps per distinct model (0: count runs and FLOPs only, time nothing).
    pub plan_steps: usize,
    pub sources: Sources,
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
fn measured_sizes(p: &Resolved, decode_s: &mut HashMap<String, f64>) -> anyhow::Result<Sizes> {
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
    Ok(Sizes {
        train: p.data.split.train.len(),
        val: p.data.split.val.len(),
        test: p.data.split.test.len(),
        classes: task.classes().len() as i64,
        segmentation: task.is_segmentation(),
        decode_s: decode,
        nominal: false,
    })
}

/// Plans (and times) the runs of several grids still to do; with `out`, writes `plan.csv`
/// (and `plan.json`) there.
pub fn plan_grids(
    exps: &[(&Path, Experiment)],
    a: &PlanOptions,
    device: Device,
) -> anyhow::Result<Plan> {
    let mut plan = Plan {
        rows: Vec::new(),
        device,
        total_runs: 0,
        done: 0,
    };
    for (path, exp) in exps {
        let specs = exp.runs(a.profile.as_deref())?;
        plan.total_runs += specs.len();
        let configs: Vec<RunConfig> = specs
            .iter()
            .map(|s| Ok(a.sources.resolve(serde_json::from_value(s.config.clone())?)))
            .collect::<anyhow::Result<_>>()?;
        let have_data = configs
            .iter()
            .all(|c| a.sources.root(&c.dataset).is_ok_and(|r| r.is_dir()));
        let mut todo: Vec<(RunConfig, Sizes)> = Vec::new();
        if have_data {
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| default_out(exp, a.profile.as_deref()));
            let (specs, resolved) = resolve_runs(specs, &a.sources, device)?;
            let mut decode = HashMap::new();
            for s in &specs {
                let dir = out.join("runs").join(&s.id);
                if read_record(&dir).is_some_and(|r| r.status == Status::Ok) {
                    plan.done += 1;
                    continue;
                }
                let p = &resolved[&s.id];
                todo.push((p.cfg.clone(), measured_sizes(p, &mut decode)?));
            }
        } else {
            tracing::warn!(
                "{}: some dataset folders are absent; planning with the releases' nominal sizes",
                path.display()
            );
            for c in configs {
                let sizes = nominal_sizes(&c)?;
                todo.push((c, sizes));
            }
        }
        plan.rows.extend(super::estimate::estimate(
            &exp.name,
            &todo,
            device,
            a.plan_steps,
        )?);
    }
    if let Some(o) = &a.out {
        plan.write(&o.join("plan.csv"))?;
    }
    Ok(plan)
}
