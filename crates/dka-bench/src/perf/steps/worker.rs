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
use crate::config::run::{OptimConfig, Precision, RunConfig};
use crate::train::model::{dense_map, Model};
use crate::train::optim::{Groups, Optimizer};
use anyhow::{bail, Context};
use dka_baselines::MethodConfig;
use dka_core::dka::Dka;
use dka_core::sites::{TokenLayout, TokenModule};
use dka_core::BackboneConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What a case trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseKind {
    /// Pooled features, a Linear head, cross-entropy.
    Classify,
    /// Segmenter's linear decoder on the patch tokens, bilinear upsampling, cross-entropy.
    Segment,
    /// DKA modules alone on a token grid (`x = DKA_i(DKA_i(x))` per layer, "mona" style),
    /// loss `mean(out^2)`.
    Stack,
}

/// The DKA layer stack of a [`CaseKind::Stack`] case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StackShape {
    pub dim: i64,
    pub h: i64,
    pub w: i64,
    pub layers: usize,
}

/// One benchmark case, as both implementations read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    pub kind: CaseKind,
    /// This project's backbone (a JSON config: the reference reads `arch` from it).
    pub backbone: Option<BackboneConfig>,
    /// The timm model the reference builds, and its extra constructor arguments.
    pub timm: Option<String>,
    pub timm_kwargs: serde_json::Value,
    pub method: MethodConfig,
    pub batch: i64,
    pub img: i64,
    pub classes: i64,
    pub stack: Option<StackShape>,
    pub head_lr: f64,
    pub adapter_lr: f64,
    pub clip_grad_norm: Option<f64>,
    /// fp32, or bf16 autocast (the forward; weights, gradients and optimiser state fp32), in
    /// both implementations.
    #[serde(default = "fp32")]
    pub precision: Precision,
}

fn fp32() -> Precision {
    Precision::Fp32
}

/// A request to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Build the case on `device`; `export`: write the shared tensors to `file`, else read them.
    /// `checkpoint`: activation checkpointing of the backbone blocks (this project only).
    Setup {
        case: Case,
        file: PathBuf,
        device: String,
        export: bool,
        checkpoint: bool,
    },
    /// One training step; the reference counts its FLOPs when asked.
    Step {
        count_flops: bool,
    },
    /// Reset the peak-memory statistic (CPU: the resident set's high-water mark).
    ResetPeak,
    /// Peak and current memory.
    Memory,
    /// fp32 GEMM throughput on `device`: median of `reps` products of two `n x n` matrices.
    Gemm {
        n: i64,
        reps: usize,
        device: String,
        /// bf16 operands (the GEMMs of a bf16 autocast step).
        #[serde(default)]
        bf16: bool,
    },
    /// `steps` training steps under the profiler (libtorch's on this side, `torch.profiler` on
    /// the reference's), its Chrome trace written to `out`.
    Profile {
        steps: usize,
        out: PathBuf,
    },
    Info,
    Quit,
}

use crate::util::profiler::profiled;

/// Resets the CPU high-water mark of the resident set to its current value (Linux >= 4.0).
pub fn reset_cpu_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn sync(device: Device) {
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

/// fp32 GEMM throughput in GFLOP/s: median of `reps` products of `n x n` matrices.
pub fn gemm_gflops(device: Device, n: i64, reps: usize, bf16: bool) -> f64 {
    let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let _ = a.matmul(&b);
    let mut ts: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            sync(device);
            let t = Instant::now();
            let _ = a.matmul(&b);
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / ts[ts.len() / 2] / 1e9
}

/// Answers requests; `None` for `quit`.
pub struct Server {
    worker: Option<Worker>,
    device: Device,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            worker: None,
            device: Device::Cpu,
        }
    }
}

impl Server {
    pub fn handle(&mut self, req: Request) -> anyhow::Result<Option<serde_json::Value>> {
        use serde_json::json;
        Ok(Some(match req {
            Request::Quit => return Ok(None),
            Request::Setup {
                case,
                file,
                device,
                export,
                checkpoint,
            } => {
                self.device = crate::util::device::pick(
                    device.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                )?;
                self.worker = None;
                let w = Worker::new(&case, &file, self.device, export, checkpoint)?;
                let trainable = w.trainable();
                self.worker = Some(w);
                sync(self.device);
                json!({ "trainable": trainable })
            }
            Request::Step { .. } => {
                let w = self.worker.as_mut().context("step before setup")?;
                let faults = crate::util::device::minor_faults();
                let (loss, ms) = w.step()?;
                let faults = crate::util::device::minor_faults()
                    .zip(faults)
                    .map(|(b, a)| b.saturating_sub(a));
                json!({ "loss": loss, "ms": ms, "page_faults": faults })
            }
            Request::ResetPeak => {
                let reset = match self.device {
                    Device::Cuda(_) => {
                        sync(self.device);
                        crate::util::device::reset_peak_memory(self.device);
                        true
                    }
                    _ => reset_cpu_peak(),
                };
                json!({ "reset": reset })
            }
            Request::Memory => {
                sync(self.device);
                let rss = crate::util::device::proc_status_bytes("VmRSS");
                match self.device {
                    Device::Cuda(_) => json!({
                        "peak_bytes": crate::util::device::peak_memory(self.device),
                        "now_bytes": null,
                        "rss_bytes": rss,
                    }),
                    _ => json!({
                        "peak_bytes": crate::util::device::proc_status_bytes("VmHWM"),
                        "now_bytes": rss,
                        "rss_bytes": rss,
                    }),
                }
            }
            Request::Gemm {
                n,
                reps,
                device,
                bf16,
            } => {
                let d = crate::util::device::pick(
                    device.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                )?;
                json!({ "gflops": gemm_gflops(d, n, reps, bf16) })
            }
            Request::Profile { steps, out } => {
                let w = self.worker.as_mut().context("profile before setup")?;
                let device = self.device;
                let ms = profiled(&out, || {
                    let mut ms = Vec::new();
                    for _ in 0..steps.max(1) {
                        ms.push(w.step()?.1);
                    }
                    sync(device);
                    Ok(ms)
                })?;
                json!({ "ms": ms, "trace": out })
            }
            Request::Info => json!({
                "libtorch": option_env!("DKA_LIBTORCH_VERSION"),
                "threads": tch::get_num_threads(),
                "cuda": tch::Cuda::is_available(),
            }),
        }))
    }
}

/// Set (to any value) by the driver when both implementations flush subnormal floats to zero.
pub const FLUSH_DENORMAL_ENV: &str = "DKA_BENCH_FLUSH_DENORMAL";

/// Flushes subnormal floats to zero on this thread and the threads it starts later (what
/// `torch.set_flush_denormal(True)` does): arithmetic on subnormals is many times slower on
/// x86, and whether a step meets them depends on the weights and the data. Call it before
/// libtorch starts its thread pool.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// `dka bench worker`: serve requests from stdin until `quit` or end of input.
pub fn serve() -> anyhow::Result<()> {
    if std::env::var_os(FLUSH_DENORMAL_ENV).is_some() {
        flush_denormals();
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "ready": true }))?;
    out.flush()?;
    let mut server = Server::default();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line)
            .map_err(anyhow::Error::from)
            .and_then(|r| server.handle(r))
        {
            Ok(None) => break,
            Ok(Some(mut v)) => {
                v["ok"] = true.into();
                v
            }
            Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}
