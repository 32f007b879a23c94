//! What a run writes as it goes: `log.txt` (what happened, line by line) and `metrics.csv`
//! (one row per epoch, flushed as the epoch ends, so a crash keeps every finished epoch).
use crate::config::metrics::{metric_names, primary_metric};
use crate::config::run::RunConfig;
use crate::train::evaluate::Evaluation;
use anyhow::Context;
use std::path::Path;
use tch::Device;

/// The run's `log.txt`: what happened, line by line, next to its metrics. The first line names
/// the device the run is on.
pub struct RunLog(std::fs::File);

impl RunLog {
    /// Writes the resolved `config.json` and starts `log.txt`.
    pub fn start(dir: &Path, cfg: &RunConfig, device: Device) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(cfg)?)
            .with_context(|| path.display().to_string())?;
        let path = dir.join("log.txt");
        let mut log =
            RunLog(std::fs::File::create(&path).with_context(|| path.display().to_string())?);
        let first = format!(
            "device {} ({} precision); dka {}; backbone {}; method {}; dataset {}; input: {}",
            crate::util::device::device_name(device),
            format!("{:?}", cfg.precision).to_lowercase(),
            env!("CARGO_PKG_VERSION"),
            cfg.backbone,
            cfg.method.method().name(),
            cfg.dataset,
            cfg.input.source.as_deref().unwrap_or("-")
        );
        tracing::info!("{first}");
        log.note(&first);
        Ok(log)
    }

    pub fn note(&mut self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "{msg}");
        tracing::debug!("{msg}");
    }

    /// The line of a finished epoch: training loss, the metrics evaluated, seconds.
    pub fn epoch(&mut self, row: &EpochRow, segmentation: bool) {
        let metric = primary_metric(segmentation);
        let eval = |name: &str, e: Option<&Evaluation>| {
            e.map(|e| format!(", {name} {metric} {:.4}", e.primary(segmentation)))
                .unwrap_or_default()
        };
        self.note(&format!(
            "epoch {}: train loss {:.4}{}{} ({:.1} s)",
            row.epoch,
            row.train_loss,
            eval("val", row.val),
            eval("test", row.test),
            row.seconds
        ));
    }
}

/// One epoch's row of `metrics.csv`.
pub struct EpochRow<'a> {
    pub epoch: usize,
    pub train_loss: f64,
    pub lr_factor: f64,
    /// fp16: steps skipped so far because their gradients were not finite.
    pub skipped_steps: usize,
    pub seconds: f64,
    pub val: Option<&'a Evaluation>,
    pub test: Option<&'a Evaluation>,
}

/// `metrics.csv` of a run: one row per epoch, written and flushed as the epoch ends, so a
/// crash keeps every finished epoch. Columns: epoch, train_loss, lr_factor, skipped_steps,
/// seconds, then `val_<metric>` and `test_<metric>` (empty when not evaluated that epoch).
pub struct MetricsLog {
    w: csv::Writer<std::fs::File>,
    names: &'static [&'static str],
}

impl MetricsLog {
    /// Continues `path` after a resume: the rows of epochs before `from_epoch` are kept, the
    /// rest (an epoch the interruption cut short) removed.
    pub fn resume(path: &Path, segmentation: bool, from_epoch: usize) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .skip(1)
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|e| e.parse::<usize>().ok())
                    .is_some_and(|e| e < from_epoch)
            })
            .collect();
        let mut log = Self::create(path, segmentation)?;
        for l in kept {
            log.w.write_record(l.split(','))?;
        }
        log.w.flush()?;
        Ok(log)
    }

    pub fn create(path: &Path, segmentation: bool) -> anyhow::Result<Self> {
        let mut w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
        let names = metric_names(segmentation);
        let mut h: Vec<String> = [
            "epoch",
            "train_loss",
            "lr_factor",
            "skipped_steps",
            "seconds",
        ]
        .map(String::from)
        .to_vec();
        for split in ["val", "test"] {
            h.extend(names.iter().map(|m| format!("{split}_{m}")));
        }
        w.write_record(&h)?;
        w.flush()?;
        Ok(Self { w, names })
    }

    pub fn append(&mut self, r: &EpochRow) -> anyhow::Result<()> {
        let mut row = vec![
            r.epoch.to_string(),
            format!("{:.6}", r.train_loss),
            format!("{:.6}", r.lr_factor),
            r.skipped_steps.to_string(),
            format!("{:.3}", r.seconds),
        ];
        for e in [r.val, r.test] {
            row.extend(
                self.names
                    .iter()
                    .map(|m| e.map(|e| format!("{:.6}", e.get(m))).unwrap_or_default()),
            );
        }
        self.w.write_record(&row)?;
        self.w.flush()?;
        Ok(())
    }
}
