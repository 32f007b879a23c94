//! A run's checkpoint: everything needed to continue a run exactly where it stopped — the
//! trained tensors, the optimiser state, the loss scaler, the epoch and batch to go on from,
//! the selection's best epoch so far (with its tensors) — in `<run>/checkpoint/`
//! (`state.json` + `tensors.safetensors`).
//!
//! A finished run keeps its last checkpoint as its final state (what `--continue` and a grid
//! whose `epochs` grew go on from) unless it is large (see [`crate::train::KEEP_STATE_BYTES`]).
//!
//! Written at the end of an epoch when the last one is 10 s old (a minute when the state is
//! large, e.g. full fine-tuning), after the last epoch, and when a signal asks the run to stop. A new checkpoint is written to a
//! temporary folder and swapped in by renames, so a SIGKILL at any moment leaves a complete
//! checkpoint (the new one or the previous one). Randomness needs no state: every training
//! step reseeds libtorch from (seed, epoch, batch), and the loader's augmentation is seeded by
//! (seed, epoch, position), so a resumed run computes what the uninterrupted one would have.
use crate::config::run::{Precision, RunConfig};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The small part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// SHA-256 of the resolved config: a checkpoint of other settings is not resumed.
    pub config_sha256: String,
    /// The epoch to go on with, and how many of its batches are done.
    pub epoch: usize,
    pub next_batch: usize,
    /// The training loss summed over those batches, and their count.
    pub loss_sum: f64,
    pub loss_steps: usize,
    /// fp16: the loss scaler.
    pub scaler: Option<crate::train::precision::ScalerState>,
    /// Selection: best score, its epoch and (when tested) its test metrics.
    pub best: Option<(f64, usize, Option<BTreeMap<String, f64>>)>,
    /// The last test evaluation (for `last` selection after the final epoch).
    pub last_test: Option<BTreeMap<String, f64>>,
    pub test_evaluations: usize,
    pub test_images: usize,
    pub seconds: f64,
    /// The precision the run trained in (absent in checkpoints of older versions).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// The number of epochs the run was made for (absent in checkpoints of older versions);
    /// a run continued to more epochs (`--continue`) changes only this.
    #[serde(default)]
    pub epochs: Option<usize>,
}

/// A loaded checkpoint: its state and its tensors by name (`model/…`, `optim/…`, `best/…`).
pub struct Checkpoint {
    pub state: State,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Tensors under `prefix/`, with the prefix removed.
    pub fn part(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let p = format!("{prefix}/");
        self.tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(&p)
                    .map(|s| (s.to_string(), t.shallow_clone()))
            })
            .collect()
    }
}

fn folder(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

fn old(run: &Path) -> PathBuf {
    run.join("checkpoint.old")
}

/// SHA-256 of what in a resolved config changes the run's arithmetic: its JSON without the
/// machine's share of it (the loader's thread count) and without the precision and the number
/// of epochs, which the state records on its own so that a change is refused in words (or,
/// for the epochs, taken by `--continue`) rather than taken for other settings. A run
/// requeued onto a node with another core count resumes.
pub fn config_sha256(cfg: &RunConfig) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut v = serde_json::to_value(cfg)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("loader_threads");
        o.remove("precision");
        o.remove("epochs");
    }
    let d = Sha256::digest(serde_json::to_vec(&v)?);
    Ok(d.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a checkpoint of `run` (see the module docs).
pub fn save(run: &Path, state: &State, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    let tmp = run.join(format!("checkpoint.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&cpu, tmp.join("tensors.safetensors"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(d) = std::fs::File::open(&tmp) {
        let _ = d.sync_all();
    }
    let (cur, old) = (folder(run), old(run));
    let _ = std::fs::remove_dir_all(&old);
    if cur.exists() {
        std::fs::rename(&cur, &old).with_context(|| cur.display().to_string())?;
    }
    std::fs::rename(&tmp, &cur).with_context(|| cur.display().to_string())?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// What a run asks of its saved state.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub config_sha256: &'a str,
    pub precision: Precision,
    /// The run's number of epochs.
    pub epochs: usize,
    /// `--continue`: a state made for fewer epochs is taken on to `epochs`.
    pub continuing: bool,
}

/// The run's checkpoint, if it has a complete one for `w.config_sha256` (one for other
/// settings is ignored with a warning). One made in another precision is refused: continuing
/// it would silently mix two precisions in one run. One made for another number of epochs is
/// taken only when continuing, and only to more epochs than it has trained.
pub fn load(run: &Path, w: Wanted) -> anyhow::Result<Option<Checkpoint>> {
    let (config_sha256, precision) = (w.config_sha256, w.precision);
    for dir in [folder(run), old(run)] {
        let state_path = dir.join("state.json");
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            continue;
        };
        let state: State = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{}: unreadable ({e}); not resumed", state_path.display());
                continue;
            }
        };
        if state.config_sha256 != config_sha256 {
            tracing::warn!(
                "{}: a checkpoint of other settings; the run starts from the beginning",
                dir.display()
            );
            return Ok(None);
        }
        if let Some(p) = state.precision.filter(|p| *p != precision) {
            let name = |p: Precision| format!("{p:?}").to_lowercase();
            anyhow::bail!(
                "{}: the run trained in {} and would continue in {}: set precision = \"{}\" \
                 to continue it, or remove {} to start it again",
                dir.display(),
                name(p),
                name(precision),
                name(p),
                dir.display()
            );
        }
        if let Some(e) = state.epochs.filter(|e| *e != w.epochs) {
            anyhow::ensure!(
                w.continuing,
                "{}: the saved state is of a {e}-epoch run (at epoch {}); pass --continue to \
                 take it to {} epochs, or another --out to start a new run",
                run.display(),
                state.epoch,
                w.epochs
            );
        }
        anyhow::ensure!(
            state.epoch <= w.epochs,
            "{}: the run has trained {} epochs already, more than the {} asked",
            run.display(),
            state.epoch,
            w.epochs
        );
        let tensors = match Tensor::read_safetensors(dir.join("tensors.safetensors")) {
            Ok(t) => t.into_iter().collect(),
            Err(e) => {
                tracing::warn!("{}: unreadable tensors ({e}); not resumed", dir.display());
                continue;
            }
        };
        return Ok(Some(Checkpoint { state, tensors }));
    }
    Ok(None)
}

/// Copies the checkpoint of run `from` into run `to` (a continuation starting from it).
pub fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let src = if folder(from).join("state.json").is_file() {
        folder(from)
    } else {
        old(from)
    };
    let dst = folder(to);
    std::fs::create_dir_all(&dst).with_context(|| dst.display().to_string())?;
    for f in ["state.json", "tensors.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f))
            .with_context(|| format!("copying {}", src.join(f).display()))?;
    }
    Ok(())
}

/// Bytes of the run's saved tensors (0 without a checkpoint).
pub fn size(run: &Path) -> u64 {
    std::fs::metadata(folder(run).join("tensors.safetensors")).map_or(0, |m| m.len())
}

/// Removes the run's checkpoint.
pub fn remove(run: &Path) {
    let _ = std::fs::remove_dir_all(folder(run));
    let _ = std::fs::remove_dir_all(old(run));
}

/// Whether `run` holds a checkpoint to resume.
pub fn exists(run: &Path) -> bool {
    folder(run).join("state.json").is_file() || old(run).join("state.json").is_file()
}
