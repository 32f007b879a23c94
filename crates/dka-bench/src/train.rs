//! The one trainer every method goes through. Method quirks are data the method returns
//! (`trains_backbone`, `frozen_features`), never branches on the method's name.
//!
//! A run: open the dataset and draw the split (its manifest goes into the run folder), build
//! the backbone (+ pretrained weights), attach the method, add a task head (classification:
//! Linear on pooled features; segmentation: Segmenter's linear decoder, a per-patch Linear
//! and bilinear upsampling), train with parameter groups, evaluate every epoch, write
//! `metrics.csv` row by row, save the trained tensors, and report the selected epoch's metrics.
use crate::decoder::{DecoderKind, MaskTransformer};
use crate::evaluate::{evaluate, primary_metric, Evaluation};
use crate::optim::{Groups, Optimizer};
use crate::run_config::{RunConfig, SegLoss, Selection};
use anyhow::{bail, Context};
use dka_core::{Backbone, BackboneConfig, Features};
use dka_data::{
    epoch_order, open_dataset, BatchLoader, BatchTarget, Dataset, LoaderConfig, Preprocess,
    SplitSpec,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Test metrics of the selected epoch (plus `selected_epoch`).
    pub metrics: BTreeMap<String, f64>,
    pub info: BTreeMap<String, String>,
}

/// The model of a run: backbone, the method's modules, the task head.
pub struct Model {
    pub backbone: Backbone,
    pub backbone_vs: nn::VarStore,
    pub adapter_vs: nn::VarStore,
    pub head_vs: nn::VarStore,
    pub head: Head,
    pub segmentation: bool,
}

/// The task head: Linear (classification, or Segmenter's linear decoder) or a mask transformer.
pub enum Head {
    Linear(nn::Linear),
    Mask(MaskTransformer),
}

impl Model {
    /// What the head reads: pooled features, or the feature map for dense prediction.
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        let f = self.backbone.forward_features(x, train);
        if self.segmentation {
            dense_map(&f)
        } else {
            self.backbone.pool(&f)
        }
    }

    /// Logits: `[B, C]`, or `[B, C, H, W]` upsampled to `size`.
    pub fn head_logits(&self, e: &Tensor, size: (i64, i64), train: bool) -> Tensor {
        let per_patch = match &self.head {
            Head::Linear(l) if !self.segmentation => return l.forward(e),
            Head::Linear(l) => {
                let s = l.ws.size();
                e.conv2d(
                    &l.ws.view([s[0], s[1], 1, 1]),
                    l.bs.as_ref(),
                    [1, 1],
                    [0, 0],
                    [1, 1],
                    1,
                )
            }
            Head::Mask(m) => m.forward_t(e, train),
        };
        per_patch.upsample_bilinear2d([size.0, size.1], false, None, None)
    }
}

/// `[B, C, h, w]` from any backbone's features (ViT patch tokens laid on their grid).
pub fn dense_map(f: &Features) -> Tensor {
    match f.layout {
        Some(l) => dka_core::vit::Vit::feature_map(&f.x, l),
        None => f.x.shallow_clone(),
    }
}

pub fn build_model(
    cfg: &RunConfig,
    classes: i64,
    segmentation: bool,
    device: Device,
) -> anyhow::Result<Model> {
    let mut bcfg = BackboneConfig::from_spec(&cfg.backbone)?;
    bcfg.set_num_classes(0);
    let mut backbone_vs = nn::VarStore::new(device);
    let mut backbone = Backbone::new(&backbone_vs.root(), &bcfg)?;
    match &cfg.weights {
        Some(w) => {
            let report = dka_core::weights::load_into(&mut backbone_vs, w, bcfg.head_prefix())?;
            tracing::info!("{}: {}", w.display(), report.summary());
        }
        None => tracing::warn!("no --weights: the backbone is randomly initialised"),
    }
    let adapter_vs = nn::VarStore::new(device);
    let method = cfg.method.method();
    method.attach(&mut backbone, &adapter_vs.root())?;
    backbone_vs.freeze();
    for (name, mut t) in backbone_vs.variables() {
        if method.trains_backbone(&name) && !name.contains("running_") {
            let _ = t.requires_grad_(true);
        }
    }
    let head_vs = nn::VarStore::new(device);
    let p = head_vs.root() / "task_head";
    let head = match (segmentation, cfg.decoder) {
        (true, DecoderKind::MaskTransformer) => {
            let d = cfg.decoder_dim.unwrap_or(backbone.num_features());
            Head::Mask(MaskTransformer::new(
                &p,
                backbone.num_features(),
                classes,
                d,
                2,
            ))
        }
        _ => Head::Linear(nn::linear(
            p,
            backbone.num_features(),
            classes,
            Default::default(),
        )),
    };
    Ok(Model {
        backbone,
        backbone_vs,
        adapter_vs,
        head_vs,
        head,
        segmentation,
    })
}

fn to_tensor(b: &dka_data::Batch, device: Device) -> (Tensor, Tensor) {
    let s = b.images.shape();
    let x = Tensor::from_slice(b.images.as_slice().expect("contiguous batch")).view([
        s[0] as i64,
        s[1] as i64,
        s[2] as i64,
        s[3] as i64,
    ]);
    let y = match &b.target {
        BatchTarget::Classes(c) => Tensor::from_slice(c),
        BatchTarget::Masks(m) => {
            let s = m.shape();
            Tensor::from_slice(m.as_slice().expect("contiguous masks")).view([
                s[0] as i64,
                s[1] as i64,
                s[2] as i64,
            ])
        }
    };
    (x.to_device(device), y.to_device(device))
}

/// Loss of logits against targets (cross-entropy; + soft Dice for segmentation if asked).
fn loss(logits: &Tensor, y: &Tensor, seg_loss: SegLoss) -> Tensor {
    let ce = logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0);
    if logits.dim() == 2 || seg_loss == SegLoss::Ce {
        return ce;
    }
    let c = logits.size()[1];
    let p = logits.softmax(1, Kind::Float);
    let onehot = y.one_hot(c).permute([0, 3, 1, 2]).to_kind(Kind::Float);
    let inter = (&p * &onehot).sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Float);
    let denom = p.sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Float);
    let dice = (inter * 2.0 + 1.0) / (denom + 1.0);
    ce + (1.0 - dice.mean(Kind::Float))
}

/// Embeddings and targets of a whole split, computed once (frozen features).
pub struct Cache {
    pub embed: Tensor,
    pub target: Tensor,
}

fn cache_split(model: &Model, loader: BatchLoader, device: Device) -> anyhow::Result<Cache> {
    let (mut es, mut ys) = (Vec::new(), Vec::new());
    for b in loader {
        let (x, y) = to_tensor(&b?, device);
        es.push(tch::no_grad(|| model.embed(&x, false)));
        ys.push(y);
    }
    Ok(Cache {
        embed: Tensor::cat(&es, 0),
        target: Tensor::cat(&ys, 0),
    })
}

/// The run's `log.txt`: what happened, line by line, next to its metrics.
struct RunLog(std::fs::File);

impl RunLog {
    fn note(&mut self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "{msg}");
        tracing::debug!("{msg}");
    }
}

/// Runs one training run in `dir` (which must exist). `root` is the dataset's folder.
pub fn train(cfg: &RunConfig, root: &Path, dir: &Path, device: Device) -> anyhow::Result<Outcome> {
    cfg.validate()?;
    tch::manual_seed(cfg.seed as i64);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg)?)?;
    let mut log = RunLog(std::fs::File::create(dir.join("log.txt"))?);
    log.note(&format!(
        "dka {} on {device:?}; backbone {}; method {}; dataset {} at {}",
        env!("CARGO_PKG_VERSION"),
        cfg.backbone,
        cfg.method.method().name(),
        cfg.dataset,
        root.display()
    ));

    let opts = cfg.data_options.clone();
    let ds: Arc<dyn Dataset> = Arc::from(open_dataset(&cfg.dataset, root, &opts)?);
    let spec = SplitSpec {
        test_fraction: cfg.test_fraction,
        val_fraction: cfg.val_fraction,
        train_fraction: dka_data::parse_fraction(&cfg.fraction)?,
        draw: cfg.draw,
        seed: cfg.split_seed,
    };
    let split = dka_data::make_split(ds.as_ref(), &spec)?;
    dka_data::Manifest::build(ds.as_ref(), &spec, &opts, &split)?
        .write(&dir.join("manifest.json"))?;
    tracing::info!(
        "{}: {} train / {} val / {} test",
        cfg.dataset,
        split.train.len(),
        split.val.len(),
        split.test.len()
    );
    log.note(&format!(
        "split (manifest.json): {} train / {} val / {} test",
        split.train.len(),
        split.val.len(),
        split.test.len()
    ));
    if opts.skip_bad {
        log.note(&format!(
            "skip_bad: {} unreadable or inconsistent file(s) skipped",
            ds.skipped().len()
        ));
    }
    if split.train.is_empty() || split.test.is_empty() {
        bail!(
            "{}: the split has no training or no test samples",
            cfg.dataset
        );
    }

    let task = ds.task().clone();
    let segmentation = task.is_segmentation();
    let classes = task.classes().len() as i64;
    let model = build_model(cfg, classes, segmentation, device)?;
    let method = cfg.method.method();

    let pre = Preprocess {
        size: (cfg.img_size, cfg.img_size),
        ..Default::default()
    };
    let augment = cfg.augment.then(dka_data::Augment::default);
    let lcfg = |drop_last: bool| LoaderConfig {
        batch_size: cfg.batch_size,
        threads: cfg.loader_threads.max(1),
        prefetch: 2,
        drop_last,
        seed: cfg.seed,
    };
    let eval_loader =
        |idx: &[usize]| BatchLoader::new(ds.clone(), idx.to_vec(), pre, None, &lcfg(false), 0);

    // Frozen features are computed once (without augmentation) and the head trains on them.
    let cache = if method.frozen_features() {
        tracing::info!("{}: features are frozen; caching them once", method.name());
        Some(cache_split(&model, eval_loader(&split.train)?, device)?)
    } else {
        None
    };
    let groups = Groups {
        head: model.head_vs.trainable_variables(),
        adapter: model.adapter_vs.trainable_variables(),
        backbone: model
            .backbone_vs
            .variables()
            .into_values()
            .filter(|t| t.requires_grad())
            .collect(),
    };
    let mut opt = Optimizer::new(&cfg.optimizer, groups)?;
    let size = (cfg.img_size as i64, cfg.img_size as i64);

    let mut csv = crate::evaluate::MetricsLog::create(&dir.join("metrics.csv"))?;
    let mut history: Vec<(usize, Option<Evaluation>, Evaluation)> = Vec::new();
    let bar = crate::progress::bar(cfg.epochs as u64, "epochs");
    for epoch in 0..cfg.epochs {
        opt.set_epoch(epoch, cfg.epochs)?;
        let (mut sum, mut n) = (0.0, 0usize);
        let mut step = |x_or_e: &Tensor, y: &Tensor, cached: bool| -> anyhow::Result<()> {
            let logits = tch::autocast(device.is_cuda(), || {
                if cached {
                    model.head_logits(x_or_e, size, true)
                } else {
                    model.head_logits(&model.embed(x_or_e, true), size, true)
                }
            })
            .to_kind(Kind::Float);
            let l = loss(&logits, y, cfg.seg_loss);
            let v = l.double_value(&[]);
            if !v.is_finite() {
                bail!("epoch {epoch}, step {n}: the loss is {v}; stopping (metrics.csv keeps every finished epoch)");
            }
            opt.zero_grad()?;
            l.backward();
            opt.step()?;
            sum += v;
            n += 1;
            Ok(())
        };
        match &cache {
            Some(c) => {
                let order = epoch_order(
                    &(0..c.target.size()[0] as usize).collect::<Vec<_>>(),
                    cfg.seed,
                    epoch as u64,
                );
                for chunk in order.chunks(cfg.batch_size) {
                    let idx =
                        Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>())
                            .to_device(device);
                    step(
                        &c.embed.index_select(0, &idx),
                        &c.target.index_select(0, &idx),
                        true,
                    )?;
                }
            }
            None => {
                let order = epoch_order(&split.train, cfg.seed, epoch as u64);
                let drop_last = order.len() > cfg.batch_size;
                for b in BatchLoader::new(
                    ds.clone(),
                    order,
                    pre,
                    augment,
                    &lcfg(drop_last),
                    epoch as u64,
                )? {
                    let (x, y) = to_tensor(&b.with_context(|| format!("epoch {epoch}"))?, device);
                    step(&x, &y, false)?;
                }
            }
        }
        let train_loss = sum / n.max(1) as f64;
        let val = if split.val.is_empty() {
            None
        } else {
            Some(evaluate(
                &model,
                eval_loader(&split.val)?,
                classes,
                size,
                device,
            )?)
        };
        let test = evaluate(&model, eval_loader(&split.test)?, classes, size, device)?;
        csv.append(
            epoch,
            train_loss,
            opt.factor(epoch, cfg.epochs),
            val.as_ref(),
            &test,
        )?;
        log.note(&format!(
            "epoch {epoch}: train loss {train_loss:.4}, test {} {:.4}",
            primary_metric(segmentation),
            test.primary(segmentation)
        ));
        history.push((epoch, val, test));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let key = |e: &Evaluation| e.primary(segmentation);
    let (epoch, _, test) = match cfg.selection {
        Selection::Last => history.last(),
        Selection::BestVal => history.iter().max_by(|a, b| {
            key(a.1.as_ref().expect("val")).total_cmp(&key(b.1.as_ref().expect("val")))
        }),
        Selection::BestTest => history
            .iter()
            .max_by(|a, b| key(&a.2).total_cmp(&key(&b.2))),
    }
    .expect("at least one epoch");
    log.note(&format!(
        "selection {:?}: epoch {epoch}, test {} {:.4}",
        cfg.selection,
        primary_metric(segmentation),
        test.primary(segmentation)
    ));
    write_radii(&model.adapter_vs, &dir.join("radii.csv"))?;
    let head: Vec<(String, Tensor)> = model.head_vs.variables().into_iter().collect();
    dka_baselines::io::save(
        &dir.join("adapter"),
        &cfg.method,
        &model.adapter_vs,
        &model.backbone_vs,
        &head,
    )?;

    let mut metrics = test.values();
    metrics.insert("selected_epoch".into(), *epoch as f64);
    metrics.insert("primary".into(), test.primary(segmentation));
    let trainable: i64 = [&model.head_vs, &model.adapter_vs]
        .iter()
        .flat_map(|v| v.trainable_variables())
        .map(|t| t.numel() as i64)
        .sum::<i64>()
        + model
            .backbone_vs
            .variables()
            .values()
            .filter(|t| t.requires_grad())
            .map(|t| t.numel() as i64)
            .sum::<i64>();
    metrics.insert("trainable_params".into(), trainable as f64);
    let mut info = BTreeMap::new();
    info.insert("selection".into(), format!("{:?}", cfg.selection));
    info.insert("train_samples".into(), split.train.len().to_string());
    info.insert("test_samples".into(), split.test.len().to_string());
    info.insert("device".into(), format!("{device:?}"));
    Ok(Outcome { metrics, info })
}

/// DKA's learnable kernel sizes (Table 3b): the learned radius of every channel of every
/// module, as `radii.csv` (module, channel, radius); nothing for other methods.
fn write_radii(adapters: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let mut radii: Vec<(String, Tensor)> = adapters
        .variables()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".radius"))
        .collect();
    if radii.is_empty() {
        return Ok(());
    }
    radii.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = csv::Writer::from_path(path).with_context(|| path.display().to_string())?;
    w.write_record(["module", "channel", "radius"])?;
    for (name, t) in radii {
        let values = Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu))?;
        for (c, r) in values.iter().enumerate() {
            w.write_record([
                name.trim_end_matches(".radius"),
                &c.to_string(),
                &format!("{r:.4}"),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}
