//! One implementation of one `dka bench steps` case, driven line by line: this project's
//! training step (the trainer's own model, forward, loss and optimiser) in a process of its own
//! (`dka bench worker`), so that its peak memory is its own. The PyTorch reference
//! (`benches/reference/steps.py`) speaks the same protocol: one JSON request per line on stdin,
//! one JSON reply per line on stdout.
//!
//! The first worker of a case builds the model from seed 0 and exports every tensor (backbone
//! `backbone/<timm name>`, method `adapter/<name>`, head `head/<name>`) with the input batch
//! (`input`) and targets (`target`) to a safetensors file; every other worker loads that file,
//! so all implementations start from the same numbers.
use super::protocol::{Case, CaseKind};
use crate::config::run::{OptimConfig, Precision, RunConfig};
use crate::train::model::{dense_map, Model};
use crate::train::optim::{Groups, Optimizer};
use anyhow::{bail, Context};
use dka_baselines::MethodConfig;
use dka_core::dka::Dka;
use dka_core::sites::{TokenLayout, TokenModule};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Waits for the device's queued work (CUDA); nothing on the CPU.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The model of a case in this project.
enum Net {
    /// The trainer's model (backbone + method + head).
    Model(Box<Model>),
    /// DKA modules on a token grid.
    Stack {
        modules: Vec<Dka>,
        layout: TokenLayout,
        vs: nn::VarStore,
    },
}

/// This project's side of one case.
pub struct Worker {
    net: Net,
    opt: Optimizer,
    x: Tensor,
    y: Tensor,
    case: Case,
    device: Device,
    checkpoint: bool,
    frozen_features: bool,
    steps: usize,
    /// As the trainer does under autocast: frozen weights cast once (opened at the first step,
    /// after the weights are exchanged).
    casts: Option<dka_core::reduced::FrozenCasts>,
}

/// Every tensor of the case under its exchange name.
fn named(net: &Net) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    let mut add = |prefix: &str, vs: &nn::VarStore| {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(v.into_iter().map(|(n, t)| (format!("{prefix}/{n}"), t)));
    };
    match net {
        Net::Model(m) => {
            add("backbone", &m.backbone_vs);
            add("adapter", &m.adapter_vs);
            add("head", &m.head_vs);
        }
        Net::Stack { vs, .. } => add("adapter", vs),
    }
    out
}

impl Worker {
    pub fn new(
        case: &Case,
        file: &Path,
        device: Device,
        export: bool,
        checkpoint: bool,
    ) -> anyhow::Result<Self> {
        tch::manual_seed(0);
        let optim = OptimConfig {
            head_lr: case.head_lr,
            adapter_lr: case.adapter_lr,
            clip_grad_norm: case.clip_grad_norm,
            ..OptimConfig::default()
        };
        let (net, groups) = match case.kind {
            CaseKind::Stack => {
                let s = case.stack.context("a stack case needs its shape")?;
                let MethodConfig::Dka(cfg) = &case.method else {
                    bail!("a stack case stacks DKA modules");
                };
                let vs = nn::VarStore::new(device);
                let modules = (0..s.layers)
                    .map(|i| Dka::new(&(vs.root() / "blocks" / i / "dka"), s.dim, cfg))
                    .collect::<dka_core::Result<Vec<_>>>()?;
                let mut adapter: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                adapter.sort_by(|a, b| a.0.cmp(&b.0));
                let layout = TokenLayout {
                    prefix: 0,
                    h: s.h,
                    w: s.w,
                };
                let groups = Groups {
                    adapter,
                    ..Default::default()
                };
                (
                    Net::Stack {
                        modules,
                        layout,
                        vs,
                    },
                    groups,
                )
            }
            CaseKind::Classify | CaseKind::Segment => {
                let bcfg = case
                    .backbone
                    .as_ref()
                    .context("the case names no backbone")?;
                let spec = file.with_extension("backbone.json");
                std::fs::write(&spec, serde_json::to_string(bcfg)?)?;
                let cfg = RunConfig {
                    backbone: spec.display().to_string(),
                    method: case.method.clone(),
                    precision: Precision::Fp32,
                    optimizer: optim.clone(),
                    ..Default::default()
                }
                .resolve(device)?;
                let seg = case.kind == CaseKind::Segment;
                let model = Model::build(&cfg, case.classes, seg, device)?;
                let groups = model.groups();
                (Net::Model(Box::new(model)), groups)
            }
        };
        let frozen_features = case.method.method().frozen_features();
        let opt = Optimizer::new(&optim, groups)?;
        let (x, y) = if export {
            let (x, y) = batch(case, device);
            let mut all = named(&net);
            all.push(("input".into(), x.shallow_clone()));
            all.push(("target".into(), y.shallow_clone()));
            let cpu: Vec<(String, Tensor)> = all
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
                .collect();
            Tensor::write_safetensors(&cpu, file)
                .with_context(|| format!("writing {}", file.display()))?;
            (x, y)
        } else {
            import(&net, file, device)?
        };
        Ok(Self {
            net,
            opt,
            x,
            y,
            case: case.clone(),
            device,
            checkpoint,
            frozen_features,
            steps: 0,
            casts: None,
        })
    }

    /// The loss of the current batch, with its backward done.
    fn forward_backward(&self) -> Tensor {
        match &self.net {
            Net::Stack {
                modules, layout, ..
            } if self.checkpoint => dka_core::layers::checkpointed_chain(
                modules.len(),
                0,
                &self.x,
                true,
                |i, t| {
                    // Each module twice, as "mona" applies it in a block (one scope, like the
                    // block's forward: the kernel is transformed once).
                    let _block = dka_core::sites::BlockScope::enter();
                    let m = &modules[i];
                    m.forward_t(&m.forward_t(t, *layout, true), *layout, true)
                },
                |t| t.square().mean(Kind::Float),
            ),
            Net::Stack {
                modules, layout, ..
            } => {
                let mut t = self.x.shallow_clone();
                for m in modules {
                    let _block = dka_core::sites::BlockScope::enter();
                    t = m.forward_t(&m.forward_t(&t, *layout, true), *layout, true);
                }
                let loss = t.square().mean(Kind::Float);
                loss.backward();
                loss
            }
            Net::Model(m) => {
                let size = (self.case.img, self.case.img);
                let loss_of = |logits: Tensor| {
                    logits.cross_entropy_loss::<Tensor>(
                        &self.y,
                        None,
                        tch::Reduction::Mean,
                        crate::train::loss::IGNORE_INDEX,
                        0.0,
                    )
                };
                if self.frozen_features {
                    // Linear probing: the trainer caches these features once per run; a
                    // step that computes them is what the first epoch costs.
                    let e = tch::no_grad(|| m.embed(&self.x, true));
                    let loss = loss_of(m.head_logits(&e, size, true));
                    loss.backward();
                    return loss;
                }
                let seg = m.segmentation;
                m.backbone
                    .forward_backward(&self.x, true, self.checkpoint, |f| {
                        let e = if seg {
                            dense_map(f)
                        } else {
                            m.backbone.pool(f)
                        };
                        loss_of(m.head_logits(&e, size, true))
                    })
            }
        }
    }

    /// One training step: (loss, milliseconds). The time covers zero-grad, forward, backward
    /// and the optimiser step, and ends after the device has finished.
    pub fn step(&mut self) -> anyhow::Result<(f64, f64)> {
        sync(self.device);
        let t = Instant::now();
        self.opt.zero_grad()?;
        // As the trainer's checkpointed step does: the whole forward-backward in autocast.
        let amp = crate::train::precision::Amp::new(self.case.precision, self.device);
        if self.casts.is_none() && amp.kind() != tch::Kind::Float {
            self.casts = Some(dka_core::reduced::FrozenCasts::keep(amp.kind()));
        }
        let loss = amp.run(|| self.forward_backward());
        self.opt.step(None)?;
        sync(self.device);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.steps += 1;
        let loss = loss.double_value(&[]);
        if !loss.is_finite() {
            bail!(
                "{}: the loss of step {} is {loss}",
                self.case.name,
                self.steps
            );
        }
        Ok((loss, ms))
    }

    pub fn trainable(&self) -> i64 {
        match &self.net {
            Net::Model(m) => m.trainable_params(),
            Net::Stack { vs, .. } => vs
                .variables()
                .values()
                .filter(|t| t.requires_grad())
                .map(|t| t.numel() as i64)
                .sum(),
        }
    }
}

/// The input batch and targets of a case, from the current seed.
fn batch(case: &Case, device: Device) -> (Tensor, Tensor) {
    let f = (Kind::Float, device);
    let b = case.batch;
    match case.kind {
        CaseKind::Stack => {
            let s = case.stack.expect("stack shape");
            (
                Tensor::randn([b, s.h * s.w, s.dim], f),
                Tensor::zeros([b], (Kind::Int64, device)),
            )
        }
        CaseKind::Classify => (
            Tensor::randn([b, 3, case.img, case.img], f),
            Tensor::arange(b, (Kind::Int64, device)).remainder(case.classes),
        ),
        CaseKind::Segment => (
            Tensor::randn([b, 3, case.img, case.img], f),
            Tensor::randint(case.classes, [b, case.img, case.img], (Kind::Int64, device)),
        ),
    }
}

/// Loads the exported tensors into `net`; every tensor must be there with its shape.
fn import(net: &Net, file: &Path, device: Device) -> anyhow::Result<(Tensor, Tensor)> {
    let mut read: BTreeMap<String, Tensor> = Tensor::read_safetensors(file)
        .with_context(|| format!("reading {}", file.display()))?
        .into_iter()
        .collect();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, mut t) in named(net) {
            let v = read
                .remove(&name)
                .with_context(|| format!("{}: no tensor {name}", file.display()))?;
            if v.size() != t.size() {
                bail!("{name}: shape {:?}, expected {:?}", v.size(), t.size());
            }
            t.copy_(&v);
        }
        Ok(())
    })?;
    let x = read.remove("input").context("no input")?.to_device(device);
    let y = read
        .remove("target")
        .context("no target")?
        .to_device(device);
    if !read.is_empty() {
        bail!(
            "{}: unused tensors {:?}",
            file.display(),
            read.keys().collect::<Vec<_>>()
        );
    }
    Ok((x, y))
}
