//! `dka train`: one run from a TOML or JSON RunConfig; continued (`--continue`) or warm-started
//! (`--init-from`).
use super::args::DataArgs;
use crate::config::record::{RunRecord, Status};
use crate::config::run::RunConfig;
use crate::config::spec::RunSpec;
use crate::grid::identity::{file_sha256, run_identity};
use crate::train::data::RunData;
use crate::train::TrainOptions;
use crate::util::device::pick;
use crate::util::fs::write_atomic;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    after_help = "Examples (experiments/examples/ holds commented configs):
  dka train experiments/examples/classification.toml --out results/my-run \\
      --data isic2019=~/data/ISIC2019 --weights ~/weights/vit_base.safetensors
  dka train experiments/examples/classification.toml --out results/my-run --continue --epochs 60
  dka train experiments/examples/classification.toml --out results/warm --init-from results/my-run

The run's folder gets config.json, hparams.yaml, manifest.json, log.txt (one line per epoch,
also on stderr), metrics.csv (per epoch: losses, learning rates, metrics), TensorBoard events
(`tensorboard --logdir results`), adapter/ (the trained tensors), result.json, and its final
state in checkpoint/ (what --continue goes on from; not kept above 256 MB unless --keep-state).
A run stopped by a signal or a crash resumes from its checkpoint when the same command is
run again.

--continue takes a finished (or interrupted) run on to --epochs N: the first epochs and their
rows in metrics.csv stay as they were. With a constant schedule the continued run computes
exactly what one N-epoch run computes; with a cosine schedule, the epochs still to go follow the
N-epoch cosine from where the run stands (its first epochs followed the shorter one), which a
single N-epoch run would not have done."
)]
pub struct Args {
    /// A RunConfig as TOML or JSON (fields: see `RunConfig`; omitted ones take defaults).
    config: PathBuf,
    /// The run's folder.
    #[arg(long)]
    out: PathBuf,
    /// Train for this many epochs instead of the config's.
    #[arg(long)]
    epochs: Option<usize>,
    /// Take the run in --out (finished or interrupted, same settings) on to --epochs N from
    /// its saved state: weights, optimiser, schedule position; randomness is drawn per
    /// (seed, epoch, step), so nothing else needs saving.
    #[arg(long = "continue", requires = "epochs")]
    continue_run: bool,
    /// Start from another run's trained tensors (its folder or its adapter/ folder; same
    /// backbone and method) instead of the method's initialisation (`init_from` in the config).
    #[arg(long, value_name = "RUN")]
    init_from: Option<PathBuf>,
    /// Write no TensorBoard event files (written by default).
    #[arg(long)]
    no_tensorboard: bool,
    /// Keep the final state however large (full fine-tuning of a large backbone).
    #[arg(long)]
    keep_state: bool,
    /// Read and check the config, print it with every default filled in (JSON), train nothing.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    data: DataArgs,
}

fn read_run_config(path: &Path) -> anyhow::Result<RunConfig> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let cfg: RunConfig = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| path.display().to_string())?
    } else {
        toml::from_str(&text).with_context(|| path.display().to_string())?
    };
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

/// The run's id as a grid would name it (resolved config, weights' and split's content).
fn run_id(
    cfg: &RunConfig,
    data: &RunData,
    cache: &Path,
    device: tch::Device,
) -> anyhow::Result<String> {
    let weights = match cfg.weights_file() {
        Some(w) => Some(file_sha256(w, cache)?),
        None => None,
    };
    let identity = run_identity(
        &cfg.resolve(device)?,
        weights.as_deref(),
        &data.split_sha256,
    )?;
    Ok(RunSpec::with_identity(BTreeMap::new(), serde_json::Value::Null, identity).id)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::util::interrupt::install()?;
    let sources = a.data.sources();
    let mut cfg = sources.resolve(read_run_config(&a.config)?);
    if let Some(n) = a.epochs {
        cfg.epochs = n;
    }
    if let Some(from) = &a.init_from {
        cfg.init_from = Some(from.clone());
    }
    cfg.validate()?;
    if a.check {
        // The backbone and its input convention must resolve too.
        dka_core::BackboneConfig::from_spec(&cfg.backbone)
            .with_context(|| format!("{}: backbone", a.config.display()))?;
        cfg.resolve(tch::Device::Cpu)?.input_spec()?;
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    if cfg.weights.is_none() {
        bail!(
            "{}: no backbone weights: pass --weights FILE.safetensors (timm's names; `dka convert` \
             renames other checkpoints), or --weights none to train from a random \
             initialisation (a control, not fine-tuning)",
            a.config.display()
        );
    }
    if a.continue_run && !crate::train::checkpoint::exists(&a.out) {
        bail!(
            "{}: no saved state to continue (not a run folder, or its final state was not kept: \
             states above 256 MB are kept only with --keep-state)",
            a.out.display()
        );
    }
    let device = pick(a.data.device)?;
    let data = RunData::open(&cfg, &sources.root(&cfg.dataset)?, &sources.cache_dir())
        .with_context(|| a.config.display().to_string())?;
    let created = !a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let opts = TrainOptions {
        tensorboard: !a.no_tensorboard,
        continuing: a.continue_run,
        keep_state: a.keep_state,
    };
    let result =
        crate::util::panics::catch(|| crate::train::train(&cfg, &data, &a.out, device, opts));
    let id = run_id(&cfg, &data, &sources.cache_dir(), device)?;
    let mut axes = BTreeMap::new();
    axes.insert("config".to_string(), a.config.display().to_string());
    let record = |status, metrics, info, error| RunRecord {
        id: id.clone(),
        status,
        axes: axes.clone(),
        metrics,
        info,
        error,
        finished_utc: crate::util::provenance::now_utc(),
    };
    let out = match result {
        Ok(o) => o,
        Err(e) if crate::util::interrupt::exit_code(&e).is_some() => return Err(e),
        Err(e) => {
            // A run that failed before writing anything leaves no empty folder behind; one
            // that started records its failure as a grid's run does.
            if created && std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_none()) {
                let _ = std::fs::remove_dir(&a.out);
            } else if a.out.join("log.txt").is_file() {
                let r = record(
                    Status::Failed,
                    BTreeMap::new(),
                    BTreeMap::new(),
                    Some(format!("{e:#}")),
                );
                let _ = write_atomic(
                    &a.out.join("result.json"),
                    serde_json::to_string_pretty(&r)?.as_bytes(),
                );
            }
            return Err(e.context(format!("the run of {}", a.config.display())));
        }
    };
    let metrics = out
        .metrics
        .iter()
        .map(|(k, v)| (k.clone(), v.is_finite().then_some(*v)))
        .collect();
    let r = record(Status::Ok, metrics, out.info.clone(), None);
    write_atomic(
        &a.out.join("result.json"),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    match crate::report::plots::curves::draw(&a.out) {
        Ok(p) => tracing::info!("training curves: {}", p.display()),
        Err(e) => tracing::warn!("no curves.png: {e:#}"),
    }
    for (k, v) in &out.metrics {
        println!("{k}: {v:.6}");
    }
    Ok(())
}
