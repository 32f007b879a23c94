//! Evaluation of a model on a split, and the per-epoch metrics log.
use crate::metrics::{classification_metrics, Confusion};
use crate::precision::Amp;
use crate::train::data::{to_device, Normalizer};
use crate::train::model::Model;
use anyhow::Context;
use dka_data::{CachedLoader, DecodedSplit};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind};

/// Classification metrics, in `metrics.csv` order; `accuracy` is the paper's number.
pub const CLASSIFICATION: [&str; 4] = ["accuracy", "balanced_accuracy", "macro_f1", "auc"];
/// Segmentation metrics; `miou_foreground` (IoU over the non-background classes) is the
/// paper's number, `miou` includes the background, `dice_foreground` is Dice over the
/// non-background classes.
pub const SEGMENTATION: [&str; 3] = ["miou_foreground", "miou", "dice_foreground"];

/// The metric names of a task.
pub fn metric_names(segmentation: bool) -> &'static [&'static str] {
    if segmentation {
        &SEGMENTATION
    } else {
        &CLASSIFICATION
    }
}

/// The paper's number: accuracy for classification, foreground IoU for segmentation (the
/// paper's "mIoU" cannot include the background: see METHODS.md, Metrics).
pub fn primary_metric(segmentation: bool) -> &'static str {
    metric_names(segmentation)[0]
}

/// A metric's name as tables print it.
pub fn metric_title(name: &str) -> &str {
    match name {
        "accuracy" => "accuracy",
        "balanced_accuracy" => "balanced accuracy",
        "macro_f1" => "macro-F1",
        "auc" => "AUC (one-vs-rest)",
        "miou_foreground" => "foreground IoU",
        "miou" => "mIoU over all classes incl. background",
        "dice_foreground" => "foreground Dice",
        other => other,
    }
}

/// The metrics of one evaluation, by name, all in [0, 1] (NaN: undefined).
#[derive(Debug, Clone)]
pub struct Evaluation(BTreeMap<String, f64>);

impl Evaluation {
    fn from_serializable(m: &impl serde::Serialize) -> Self {
        let v = serde_json::to_value(m).expect("metrics serialise");
        Self(
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(f64::NAN)
    }

    pub fn primary(&self, segmentation: bool) -> f64 {
        self.get(primary_metric(segmentation))
    }

    pub fn values(&self) -> BTreeMap<String, f64> {
        self.0.clone()
    }

    pub fn from_values(v: BTreeMap<String, f64>) -> Self {
        Self(v)
    }
}

/// What evaluating needs besides the model.
pub struct EvalSetup<'a> {
    pub normalizer: &'a Normalizer,
    pub amp: Amp,
    pub classes: i64,
    pub size: (i64, i64),
    pub device: Device,
    /// Images are padded (`longest-side-pad`): normalise the content only.
    pub pad: bool,
}

/// Metrics of `model` over every batch of `loader` (over `split`), and the number of images
/// seen.
pub fn evaluate(
    model: &Model,
    loader: CachedLoader,
    split: &DecodedSplit,
    s: &EvalSetup,
) -> anyhow::Result<(Evaluation, usize)> {
    let mut probs: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut confusion = Confusion::new(s.classes as usize);
    let mut images = 0;
    for b in loader {
        let b = b.context("evaluation batch")?;
        let (x, y, valid) = to_device(&b, split, s.pad, s.device);
        images += x.size()[0] as usize;
        let x = s.normalizer.apply(&x, valid.as_ref());
        let logits = tch::no_grad(|| {
            s.amp
                .run(|| model.head_logits(&model.embed(&x, false), s.size, false))
        })
        .to_kind(Kind::Float);
        if model.segmentation {
            let pred = logits.argmax(1, false).to_device(Device::Cpu).view([-1]);
            let target = y.to_kind(Kind::Int64).to_device(Device::Cpu).view([-1]);
            confusion.add(
                &Vec::<i64>::try_from(&pred)?,
                &Vec::<i64>::try_from(&target)?,
            );
        } else {
            let p = logits
                .softmax(-1, Kind::Float)
                .to_device(Device::Cpu)
                .contiguous()
                .view([-1]);
            probs.extend(Vec::<f32>::try_from(&p)?);
            labels.extend(Vec::<i64>::try_from(&y.to_device(Device::Cpu))?);
        }
    }
    let e = if model.segmentation {
        Evaluation::from_serializable(&confusion.metrics())
    } else {
        Evaluation::from_serializable(&classification_metrics(&probs, s.classes as usize, &labels))
    };
    Ok((e, images))
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
