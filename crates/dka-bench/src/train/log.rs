//! What a run writes as it goes: `config.json` and `hparams.yaml` (the resolved config, nested
//! and flat), `log.txt` (what happened, line by line; one info line per epoch also on stderr),
//! `metrics.csv` (one row per epoch, flushed as the epoch ends, so a crash keeps every finished
//! epoch) and, when asked, TensorBoard event files.
use crate::config::metrics::{metric_names, primary_metric};
use crate::config::run::RunConfig;
use crate::train::evaluate::Evaluation;
use crate::util::tensorboard::EventWriter;
use anyhow::Context;
use std::path::Path;
use tch::Device;

/// The roles of the trainable tensors, in `metrics.csv`'s `lr_<role>` order.
pub const ROLES: [&str; 3] = ["head", "adapter", "backbone"];

/// The run's `log.txt` (appended to: a resumed or continued run keeps what came before), its
/// epoch lines on stderr, and its TensorBoard events.
pub struct RunLog {
    file: std::fs::File,
    /// The run folder's name, which starts each epoch line on stderr (a grid's runs interleave).
    label: String,
    events: Option<EventWriter>,
}

/// `cfg` as flat `key: value` lines (YAML; nested fields as dotted keys, values in JSON
/// notation, which YAML reads), for tools that want one level (Lightning's `hparams.yaml`).
pub fn hparams_yaml(cfg: &RunConfig) -> anyhow::Result<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push(format!("{prefix}: {other}")),
        }
    }
    let mut lines = Vec::new();
    walk("", &serde_json::to_value(cfg)?, &mut lines);
    Ok(format!(
        "# The run's resolved config, flat (config.json has it nested).\n{}\n",
        lines.join("\n")
    ))
}

impl RunLog {
    /// Writes the resolved `config.json` and `hparams.yaml`, opens `log.txt` (appending) and,
    /// with `tensorboard`, a new event file in `dir`.
    pub fn start(
        dir: &Path,
        cfg: &RunConfig,
        device: Device,
        tensorboard: bool,
    ) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(cfg)?)
            .with_context(|| path.display().to_string())?;
        let path = dir.join("hparams.yaml");
        std::fs::write(&path, hparams_yaml(cfg)?).with_context(|| path.display().to_string())?;
        let path = dir.join("log.txt");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        let events = if tensorboard {
            Some(EventWriter::create(dir)?)
        } else {
            None
        };
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| dir.display().to_string());
        let mut log = RunLog {
            file,
            label,
            events,
        };
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
        tracing::info!("{}: {first}", log.label);
        log.note(&format!(
            "started {}: {first}",
            crate::util::provenance::now_utc()
        ));
        Ok(log)
    }

    /// A line in `log.txt` (and at debug level on stderr).
    pub fn note(&mut self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(self.file, "{msg}");
        tracing::debug!("{msg}");
    }

    /// A line in `log.txt` and at info level on stderr.
    pub fn say(&mut self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(self.file, "{msg}");
        tracing::info!("{}: {msg}", self.label);
    }

    /// The line of a finished epoch (log.txt and stderr): losses, the metric evaluated,
    /// learning rates, seconds, images/s; and its TensorBoard scalars.
    pub fn epoch(&mut self, row: &EpochRow, segmentation: bool) -> anyhow::Result<()> {
        let metric = primary_metric(segmentation);
        let mut parts = vec![format!("train loss {:.4}", row.train_loss)];
        for (name, e) in [("val", row.val), ("test", row.test)] {
            if let Some(e) = e {
                if let Some(l) = e.loss {
                    parts.push(format!("{name} loss {l:.4}"));
                }
                parts.push(format!("{name} {metric} {:.4}", e.primary(segmentation)));
            }
        }
        let lrs: Vec<String> = row
            .lrs
            .iter()
            .map(|(role, lr)| format!("{role} {lr:.3e}"))
            .collect();
        parts.push(format!("lr {}", lrs.join(" ")));
        let per_s = row.images as f64 / row.seconds.max(1e-9);
        self.say(&format!(
            "epoch {}/{}: {}, {:.1} s, {per_s:.1} images/s",
            row.epoch + 1,
            row.epochs,
            parts.join(", "),
            row.seconds
        ));
        if let Some(ev) = &mut self.events {
            let mut s: Vec<(String, f64)> = vec![
                ("loss/train".into(), row.train_loss),
                ("throughput/images_per_s".into(), per_s),
            ];
            for (name, e) in [("val", row.val), ("test", row.test)] {
                if let Some(e) = e {
                    if let Some(l) = e.loss {
                        s.push((format!("loss/{name}"), l));
                    }
                    for m in metric_names(segmentation) {
                        s.push((format!("{name}/{m}"), e.get(m)));
                    }
                }
            }
            s.extend(row.lrs.iter().map(|(r, lr)| (format!("lr/{r}"), *lr)));
            ev.scalars(row.epoch as i64, &s)?;
        }
        Ok(())
    }
}

/// One epoch's row of `metrics.csv`.
pub struct EpochRow<'a> {
    pub epoch: usize,
    /// The run's number of epochs.
    pub epochs: usize,
    pub train_loss: f64,
    pub lr_factor: f64,
    /// The learning rate of each role that has trainable tensors (of [`ROLES`]).
    pub lrs: Vec<(&'static str, f64)>,
    /// fp16: steps skipped so far because their gradients were not finite.
    pub skipped_steps: usize,
    pub seconds: f64,
    /// Training images seen this epoch.
    pub images: usize,
    pub val: Option<&'a Evaluation>,
    pub test: Option<&'a Evaluation>,
}

/// `metrics.csv` of a run: one row per epoch, written and flushed as the epoch ends, so a
/// crash keeps every finished epoch. Columns: epoch (from 0), train_loss, lr_factor,
/// skipped_steps, seconds, images_per_s, `lr_<role>` (the learning rate used, empty for a role
/// without trainable tensors), val_loss, test_loss, then `val_<metric>` and `test_<metric>`
/// (empty when not evaluated that epoch).
pub struct MetricsLog {
    w: csv::Writer<std::fs::File>,
    names: &'static [&'static str],
}

fn header(segmentation: bool) -> Vec<String> {
    let mut h: Vec<String> = [
        "epoch",
        "train_loss",
        "lr_factor",
        "skipped_steps",
        "seconds",
        "images_per_s",
    ]
    .map(String::from)
    .to_vec();
    h.extend(ROLES.iter().map(|r| format!("lr_{r}")));
    h.extend(["val_loss".to_string(), "test_loss".to_string()]);
    for split in ["val", "test"] {
        h.extend(
            metric_names(segmentation)
                .iter()
                .map(|m| format!("{split}_{m}")),
        );
    }
    h
}

impl MetricsLog {
    /// Continues `path` after a resume: the rows of epochs before `from_epoch` are kept as they
    /// were (cells moved to today's columns by name, so a file of an older version keeps its
    /// numbers), the rest (an epoch the interruption cut short) removed.
    pub fn resume(path: &Path, segmentation: bool, from_epoch: usize) -> anyhow::Result<Self> {
        let mut kept: Vec<Vec<String>> = Vec::new();
        let h = header(segmentation);
        if let Ok(mut r) = csv::Reader::from_path(path) {
            let old: Vec<String> = r.headers()?.iter().map(String::from).collect();
            for rec in r.records() {
                let rec = rec.with_context(|| path.display().to_string())?;
                let epoch = rec.get(0).and_then(|e| e.parse::<usize>().ok());
                if epoch.is_none_or(|e| e >= from_epoch) {
                    continue;
                }
                kept.push(
                    h.iter()
                        .map(|c| {
                            old.iter()
                                .position(|o| o == c)
                                .and_then(|i| rec.get(i))
                                .unwrap_or("")
                                .to_string()
                        })
                        .collect(),
                );
            }
        }
        let mut log = Self::create(path, segmentation)?;
        for row in kept {
            log.w.write_record(&row)?;
        }
        log.w.flush()?;
        Ok(log)
    }

    pub fn create(path: &Path, segmentation: bool) -> anyhow::Result<Self> {
        let mut w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
        w.write_record(header(segmentation))?;
        w.flush()?;
        Ok(Self {
            w,
            names: metric_names(segmentation),
        })
    }

    pub fn append(&mut self, r: &EpochRow) -> anyhow::Result<()> {
        let mut row = vec![
            r.epoch.to_string(),
            format!("{:.6}", r.train_loss),
            format!("{:.6}", r.lr_factor),
            r.skipped_steps.to_string(),
            format!("{:.3}", r.seconds),
            format!("{:.2}", r.images as f64 / r.seconds.max(1e-9)),
        ];
        for role in ROLES {
            row.push(
                r.lrs
                    .iter()
                    .find(|(n, _)| *n == role)
                    .map(|(_, lr)| format!("{lr:.6e}"))
                    .unwrap_or_default(),
            );
        }
        for e in [r.val, r.test] {
            row.push(
                e.and_then(|e| e.loss)
                    .map(|l| format!("{l:.6}"))
                    .unwrap_or_default(),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hparams_are_flat_dotted_keys() {
        let y = hparams_yaml(&RunConfig::default()).unwrap();
        assert!(y.contains("\nepochs: "), "{y}");
        assert!(y.contains("\noptimizer.head_lr: "), "{y}");
        assert!(y.lines().skip(1).all(|l| l.contains(": ")));
    }

    #[test]
    fn resumed_rows_keep_their_numbers_under_todays_columns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.csv");
        std::fs::write(
            &p,
            "epoch,train_loss,lr_factor,skipped_steps,seconds,val_accuracy\n0,1.5,1,0,2.0,0.5\n1,1.2,1,0,2.0,0.6\n2,1.1,1,0,2.0,\n",
        )
        .unwrap();
        drop(MetricsLog::resume(&p, false, 2).unwrap());
        let mut r = csv::Reader::from_path(&p).unwrap();
        let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(h, header(false));
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        let col = |n: &str| h.iter().position(|c| c == n).unwrap();
        assert_eq!(&rows[1][col("train_loss")], "1.2");
        assert_eq!(&rows[1][col("val_accuracy")], "0.6");
        assert_eq!(&rows[1][col("lr_head")], "");
    }
}
