//! Evaluation of a model on a split: the metrics of every batch, pooled over the split.
use crate::config::metrics::primary_metric;
use crate::config::run::RunConfig;
use crate::train::data::{to_device, Normalizer, RunData};
use crate::train::loss::loss;
use crate::train::metrics::{classification_metrics, Confusion};
use crate::train::model::Model;
use crate::train::precision::Amp;
use anyhow::Context;
use dka_data::{CachedLoader, DecodedSplit};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The metrics of one evaluation, by name, all in [0, 1] (NaN: undefined), and the mean loss
/// over its images (the training loss, without augmentation) when it was computed.
#[derive(Debug, Clone)]
pub struct Evaluation {
    values: BTreeMap<String, f64>,
    pub loss: Option<f64>,
}

impl Evaluation {
    fn from_serializable(m: &impl serde::Serialize) -> Self {
        let v = serde_json::to_value(m).expect("metrics serialise");
        Self::from_values(
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
        self.values.get(name).copied().unwrap_or(f64::NAN)
    }

    pub fn primary(&self, segmentation: bool) -> f64 {
        self.get(primary_metric(segmentation))
    }

    pub fn values(&self) -> BTreeMap<String, f64> {
        self.values.clone()
    }

    pub fn from_values(v: BTreeMap<String, f64>) -> Self {
        Self {
            values: v,
            loss: None,
        }
    }
}

/// What evaluating needs besides the model.
pub struct EvalSetup {
    pub normalizer: Normalizer,
    pub amp: Amp,
    pub classes: i64,
    pub size: (i64, i64),
    pub device: Device,
    /// Images are padded (`longest-side-pad`): normalise the content only.
    pub pad: bool,
    /// The data's class index → the run's (external data whose classes come in another
    /// order); `None`: the same indices.
    pub remap: Option<Vec<i64>>,
    /// The loss reported with the metrics (the run's training loss).
    pub seg_loss: crate::config::run::SegLoss,
}

impl EvalSetup {
    /// The setup of a run (`cfg` resolved) on `device`, for a task of `classes` classes.
    pub fn new(cfg: &RunConfig, classes: i64, device: Device) -> anyhow::Result<Self> {
        let spec = cfg.input_spec()?;
        Ok(Self {
            normalizer: Normalizer::new(&spec, device),
            amp: Amp::new(cfg.precision, device),
            classes,
            size: (cfg.img_size as i64, cfg.img_size as i64),
            device,
            pad: spec.resize == dka_core::input::ResizeMode::LongestSidePad,
            remap: None,
            seg_loss: cfg.seg_loss,
        })
    }
}

/// What one image of an evaluation gave.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Classification: the class probabilities and the true class (the run's indices).
    Class { probs: Vec<f32>, label: i64 },
    /// Segmentation: the confusion of the image's pixels.
    Pixels(Confusion),
}

/// Metrics of `model` over every batch of `loader` (over `split`), and the number of images
/// seen.
pub fn evaluate(
    model: &Model,
    loader: CachedLoader,
    split: &DecodedSplit,
    s: &EvalSetup,
) -> anyhow::Result<(Evaluation, usize)> {
    evaluate_each(model, loader, split, s, None)
}

/// [`evaluate`], also giving each image's [`Outcome`] by its position in `split` when
/// `each` is given. The pooled metrics are the same either way: a segmentation's pooled
/// confusion is the sum of the images' confusions.
pub fn evaluate_each(
    model: &Model,
    loader: CachedLoader,
    split: &DecodedSplit,
    s: &EvalSetup,
    mut each: Option<&mut Vec<(usize, Outcome)>>,
) -> anyhow::Result<(Evaluation, usize)> {
    let mut probs: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut confusion = Confusion::new(s.classes as usize);
    let mut images = 0;
    let mut loss_sum = 0.0;
    let seg_loss = s.seg_loss;
    let c = s.classes as usize;
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
        let n = x.size()[0] as f64;
        // External data's classes in the run's indices (ignore indices stay as they are).
        let y = match &s.remap {
            Some(m) => {
                let table = Tensor::from_slice(m).to_device(s.device);
                let inside = y.ge(0).logical_and(&y.lt(m.len() as i64));
                table
                    .index_select(0, &y.clamp(0, m.len() as i64 - 1).view([-1]))
                    .view_as(&y)
                    .where_self(&inside, &y)
            }
            None => y,
        };
        loss_sum += n * tch::no_grad(|| loss(&logits, &y, seg_loss)).double_value(&[]);
        if model.segmentation {
            let pred =
                Vec::<i64>::try_from(&logits.argmax(1, false).to_device(Device::Cpu).view([-1]))?;
            let target =
                Vec::<i64>::try_from(&y.to_kind(Kind::Int64).to_device(Device::Cpu).view([-1]))?;
            confusion.add(&pred, &target);
            if let Some(each) = each.as_deref_mut() {
                let per = pred.len() / b.indices.len().max(1);
                for (k, &pos) in b.indices.iter().enumerate() {
                    let mut one = Confusion::new(c);
                    let r = k * per..(k + 1) * per;
                    one.add(&pred[r.clone()], &target[r]);
                    each.push((pos, Outcome::Pixels(one)));
                }
            }
        } else {
            let p = logits
                .softmax(-1, Kind::Float)
                .to_device(Device::Cpu)
                .contiguous()
                .view([-1]);
            let p = Vec::<f32>::try_from(&p)?;
            let y: Vec<i64> = Vec::<i64>::try_from(&y.to_device(Device::Cpu))?;
            if let Some(each) = each.as_deref_mut() {
                for (k, &pos) in b.indices.iter().enumerate() {
                    each.push((
                        pos,
                        Outcome::Class {
                            probs: p[k * c..(k + 1) * c].to_vec(),
                            label: y[k],
                        },
                    ));
                }
            }
            probs.extend(p);
            labels.extend(y);
        }
    }
    let mut e = if model.segmentation {
        Evaluation::from_serializable(&confusion.metrics())
    } else {
        Evaluation::from_serializable(&classification_metrics(&probs, s.classes as usize, &labels))
    };
    e.loss = (images > 0).then(|| loss_sum / images as f64);
    Ok((e, images))
}

/// Metrics of `model` on split `which` of `data`, as the trainer evaluates (`cfg` resolved).
pub fn evaluate_split(
    cfg: &RunConfig,
    model: &Model,
    data: &RunData,
    which: dka_data::SplitName,
    device: Device,
) -> anyhow::Result<Evaluation> {
    let spec = cfg.input_spec()?;
    let pre = crate::train::data::preprocess(cfg, &spec);
    let setup = EvalSetup::new(cfg, data.ds.task().classes().len() as i64, device)?;
    let (split, _) = data.decoded(which, &pre, cfg.loader_threads.max(1))?;
    let order = (0..split.len()).collect();
    Ok(evaluate(
        model,
        crate::train::data::eval_loader(&split, order, cfg)?,
        &split,
        &setup,
    )?
    .0)
}
