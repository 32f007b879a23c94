//! Evaluation of a model on a split, and the per-epoch metrics log.
use crate::metrics::{classification_metrics, Confusion};
use crate::train::Model;
use anyhow::Context;
use dka_data::BatchLoader;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The metrics of one evaluation, by name (accuracy, balanced_accuracy, macro_f1, auc; or
/// miou, miou_foreground, dice_foreground), all in [0, 1].
#[derive(Debug, Clone)]
pub struct Evaluation(BTreeMap<String, f64>);

/// The paper's number: accuracy for classification, mIoU over all classes for segmentation.
pub fn primary_metric(segmentation: bool) -> &'static str {
    if segmentation {
        "miou"
    } else {
        "accuracy"
    }
}

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

    pub fn primary(&self, segmentation: bool) -> f64 {
        self.0
            .get(primary_metric(segmentation))
            .copied()
            .unwrap_or(f64::NAN)
    }

    pub fn values(&self) -> BTreeMap<String, f64> {
        self.0.clone()
    }
}

pub fn evaluate(
    model: &Model,
    loader: BatchLoader,
    classes: i64,
    size: (i64, i64),
    device: Device,
) -> anyhow::Result<Evaluation> {
    let mut probs: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut confusion = Confusion::new(classes as usize);
    for b in loader {
        let b = b.context("evaluation batch")?;
        let s = b.images.shape();
        let x = Tensor::from_slice(b.images.as_slice().expect("contiguous"))
            .view([s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64])
            .to_device(device);
        let logits = tch::no_grad(|| {
            tch::autocast(device.is_cuda(), || {
                model.head_logits(&model.embed(&x, false), size, false)
            })
        });
        match &b.target {
            dka_data::BatchTarget::Classes(c) => {
                let p = logits
                    .softmax(-1, Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous()
                    .view([-1]);
                probs.extend(Vec::<f32>::try_from(&p)?);
                labels.extend_from_slice(c);
            }
            dka_data::BatchTarget::Masks(m) => {
                let pred = logits
                    .argmax(1, false)
                    .to_device(Device::Cpu)
                    .contiguous()
                    .view([-1]);
                confusion.add(
                    &Vec::<i64>::try_from(&pred)?,
                    m.as_slice().expect("contiguous masks"),
                );
            }
        }
    }
    Ok(if labels.is_empty() {
        Evaluation::from_serializable(&confusion.metrics())
    } else {
        Evaluation::from_serializable(&classification_metrics(&probs, classes as usize, &labels))
    })
}

/// `metrics.csv` of a run: one row per epoch, written and flushed as the epoch ends, so a
/// crash keeps every finished epoch.
pub struct MetricsLog {
    w: csv::Writer<std::fs::File>,
    header: Option<Vec<String>>,
}

impl MetricsLog {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
        Ok(Self { w, header: None })
    }

    pub fn append(
        &mut self,
        epoch: usize,
        train_loss: f64,
        lr_factor: f64,
        val: Option<&Evaluation>,
        test: &Evaluation,
    ) -> anyhow::Result<()> {
        let mut row: Vec<(String, f64)> = vec![
            ("epoch".into(), epoch as f64),
            ("train_loss".into(), train_loss),
            ("lr_factor".into(), lr_factor),
        ];
        if let Some(v) = val {
            row.extend(v.0.iter().map(|(k, x)| (format!("val_{k}"), *x)));
        }
        row.extend(test.0.iter().map(|(k, x)| (format!("test_{k}"), *x)));
        if self.header.is_none() {
            let h: Vec<String> = row.iter().map(|(k, _)| k.clone()).collect();
            self.w.write_record(&h)?;
            self.header = Some(h);
        }
        self.w.write_record(row.iter().map(|(k, x)| {
            if k == "epoch" {
                format!("{x}")
            } else {
                format!("{x:.6}")
            }
        }))?;
        self.w.flush()?;
        Ok(())
    }
}
