//! `dka gpu-check`: what this build does on the machine's GPU, in one CSV
//! (`results/gpu/check.csv`): the device; every parity fixture's forward pass on the CPU and on
//! CUDA in fp32 and bf16 against the reference library's output; one training step of every
//! method on ViT-B/16 (random weights) in bf16 with its time and peak memory; a two-epoch grid
//! on CUDA. Without CUDA it says so and runs the CPU part only.
use crate::config::run::{Precision, RunConfig};
use crate::config::sources::Sources;
use crate::grid::experiment::{run_experiment, ExperimentOptions};
use crate::train::model::Model;
use crate::train::precision::Amp;
use crate::util::device::{
    cuda_bf16_native, cuda_device_name, device_name, peak_memory, reset_peak_memory, DeviceArg,
};
use crate::util::stats::median;
use anyhow::Context;
use dka_core::weights::{load_checkpoint, read_safetensors, Checkpoint};
use dka_core::{Backbone, BackboneConfig};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// What `dka gpu-check` checks and where it writes.
#[derive(Debug, Clone)]
pub struct GpuCheckOptions {
    /// The CSV to write.
    pub out: PathBuf,
    /// Parity fixtures (`just fixtures`): folders with config.json, model.safetensors and
    /// io.safetensors (input and the reference library's features).
    pub fixtures: PathBuf,
    /// Batch size of the ViT-B/16 training steps.
    pub batch: i64,
    /// Timed steps per method (after one warm-up step).
    pub steps: usize,
    /// The CUDA device to check.
    pub cuda: usize,
    /// Skip the two-epoch grid.
    pub no_grid: bool,
    /// Backbone of the training steps.
    pub backbone: String,
    /// Without CUDA, run the training steps and the grid on the CPU too (fp32; slow with
    /// ViT-B: for testing this command with a small --backbone).
    pub cpu_steps: bool,
}

/// One line of check.csv.
#[derive(serde::Serialize)]
pub struct Row {
    pub section: &'static str,
    pub item: String,
    pub device: String,
    pub precision: String,
    pub value: String,
    pub unit: String,
    pub tolerance: String,
    /// `true`, `false`, or empty for information.
    pub ok: String,
    pub note: String,
}

impl Row {
    /// The row as a terminal line.
    pub fn line(&self) -> String {
        format!(
            "{:10} {:45} {:7} {:5} {:>10} {} {}{}",
            self.section,
            self.item,
            self.device,
            self.precision,
            self.value,
            self.unit,
            if self.ok.is_empty() {
                String::new()
            } else {
                format!("ok={}", self.ok)
            },
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.note)
            }
        )
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        self.ok == "false"
    }

    fn info(item: &str, value: impl ToString) -> Self {
        Self {
            section: "device",
            item: item.into(),
            device: String::new(),
            precision: String::new(),
            value: value.to_string(),
            unit: String::new(),
            tolerance: String::new(),
            ok: String::new(),
            note: String::new(),
        }
    }
}

/// Features of a fixture's backbone on `device`, fp32 or bf16 autocast, on the CPU as f32.
/// A fixture's features from our backbone on `device` under `amp` (as f32 on the CPU), the
/// reference's fp32 features and, when the fixture has them, the reference's bf16 features
/// (CPU autocast; through the kernels dka calls where those differ: `features_bf16_fused`).
fn fixture_features(
    dir: &Path,
    device: Device,
    amp: Amp,
) -> anyhow::Result<(Tensor, Tensor, Option<Tensor>)> {
    let mut cfg = BackboneConfig::from_spec(dir.join("config.json").to_str().unwrap_or(""))?;
    let ckpt = Checkpoint::read(&dir.join("model.safetensors"))?;
    cfg.set_num_classes(ckpt.head_classes(cfg.head_prefix()).unwrap_or(0));
    let mut vs = nn::VarStore::new(device);
    let model = Backbone::new(&vs.root(), &cfg)?;
    load_checkpoint(&mut vs, &ckpt, cfg.head_prefix())?;
    let io = read_safetensors(&dir.join("io.safetensors"))?;
    let get = |name: &str| {
        io.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| {
                format!(
                    "{}: no tensor '{name}'",
                    dir.join("io.safetensors").display()
                )
            })
    };
    let input = get("input")?.to_kind(Kind::Float).to_device(device);
    let reference = get("features")?.to_kind(Kind::Float);
    let bf16 = get("features_bf16_fused")
        .or_else(|_| get("features_bf16"))
        .ok();
    let out = tch::no_grad(|| amp.run(|| model.forward_features(&input, false).x));
    Ok((
        out.to_kind(Kind::Float).to_device(Device::Cpu),
        reference,
        bf16,
    ))
}

/// One fixture on one device in one precision. fp32: against the reference's fp32 output,
/// relative to max(1, max |ref|): 1e-4 on the CPU (as the parity tests), 1e-3 on CUDA (TF32
/// convolutions, cuDNN's default). bf16: against the reference's bf16 output (CPU autocast),
/// in units of bf16's own effect on it (max |ref bf16 - ref fp32|): at most 0.1 on the CPU
/// (as tests/bf16_parity.rs; in practice 0), at most 1 on CUDA, whose bf16 kernels round
/// otherwise than the CPU's the reference ran on.
fn forward_row(dir: &Path, name: String, device: Device, precision: Precision) -> Row {
    let bf16 = precision == Precision::Bf16;
    let tol = match (device, bf16) {
        (Device::Cpu, false) => 1e-4,
        (_, false) => 1e-3,
        (Device::Cpu, true) => 0.1,
        (_, true) => 1.0,
    };
    let (value, ok, note) = match fixture_features(dir, device, Amp::new(precision, device)) {
        Ok((out, reference, ref_bf16)) => {
            let err = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
            let v = match (bf16, ref_bf16) {
                (true, Some(rb)) => Ok(err(&out, &rb) / err(&rb, &reference).max(1e-12)),
                (true, None) => Err("no features_bf16 in the fixture (rerun `just fixtures`)"),
                (false, _) => {
                    Ok(err(&out, &reference) / reference.abs().max().double_value(&[]).max(1.0))
                }
            };
            match v {
                Ok(v) => (format!("{v:.3e}"), (v <= tol).to_string(), String::new()),
                Err(e) => (String::new(), "false".into(), e.to_string()),
            }
        }
        Err(e) => (String::new(), "false".into(), format!("{e:#}")),
    };
    Row {
        section: "forward",
        item: name,
        device: device_name(device),
        precision: format!("{precision:?}").to_lowercase(),
        value,
        unit: if bf16 {
            "max |ours - ref bf16| / max |ref bf16 - ref fp32|"
        } else {
            "max |ours - reference| / max(1, max |reference|)"
        }
        .into(),
        tolerance: format!("{tol:e}"),
        ok,
        note,
    }
}

fn forward_rows(fixtures: &Path, devices: &[(Device, Precision)]) -> Vec<Row> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    // Backbone fixtures only (the peft ones add an adapter to the reference output).
    dirs.retain(|d| {
        ["config.json", "model.safetensors", "io.safetensors"]
            .iter()
            .all(|f| d.join(f).is_file())
            && !d.join("adapter").exists()
    });
    dirs.sort();
    let mut rows = Vec::new();
    if dirs.is_empty() {
        let mut r = Row::info("fixtures", "none");
        r.section = "forward";
        r.ok = "false".into();
        r.note = format!(
            "no fixtures under {} (run `just fixtures`)",
            fixtures.display()
        );
        rows.push(r);
    }
    for dir in dirs {
        for &(device, precision) in devices {
            let name = dir
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            rows.push(forward_row(&dir, name, device, precision));
        }
    }
    rows
}

/// One timed training step per method on ViT-B/16 with random weights.
fn step_rows(
    backbone: &str,
    device: Device,
    precision: Precision,
    batch: i64,
    steps: usize,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let size = match BackboneConfig::from_spec(backbone) {
        Ok(BackboneConfig::Vit(c)) => c.img_size.hw().0,
        _ => 224,
    };
    let label = Path::new(backbone)
        .file_name()
        .map_or(backbone.to_string(), |f| f.to_string_lossy().to_string());
    for name in dka_baselines::NAMES {
        let cfg = RunConfig {
            backbone: backbone.into(),
            method: dka_baselines::MethodConfig::by_name(name).expect("a known method"),
            precision,
            ..Default::default()
        };
        let result = (|| -> anyhow::Result<(f64, Option<u64>, f64)> {
            let cfg = cfg.resolve(device)?;
            let model = Model::build(&cfg, 10, false, device)?;
            let mut opt = crate::train::optim::Optimizer::new(&cfg.optimizer, model.groups())?;
            let amp = Amp::new(cfg.precision, device);
            let x = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
            let y = Tensor::randint(10, [batch], (Kind::Int64, device));
            let sync = || {
                if let Device::Cuda(i) = device {
                    tch::Cuda::synchronize(i as i64);
                }
            };
            let mut step = || -> anyhow::Result<f64> {
                let logits = amp
                    .run(|| model.head_logits(&model.embed(&x, true), (size, size), true))
                    .to_kind(Kind::Float);
                let loss = logits.cross_entropy_for_logits(&y);
                opt.zero_grad()?;
                loss.backward();
                opt.step(None)?;
                Ok(loss.double_value(&[]))
            };
            step()?;
            sync();
            reset_peak_memory(device);
            let mut times = Vec::new();
            let mut loss = 0.0;
            for _ in 0..steps.max(1) {
                let t = std::time::Instant::now();
                loss = step()?;
                sync();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok((
                median(&times).unwrap_or(f64::NAN),
                peak_memory(device),
                loss,
            ))
        })();
        let (value, ok, note, peak) = match result {
            Ok((ms, peak, loss)) => (
                format!("{ms:.2}"),
                loss.is_finite().to_string(),
                format!("loss {loss:.4}"),
                peak,
            ),
            Err(e) => (String::new(), "false".into(), format!("{e:#}"), None),
        };
        let dev = device_name(device);
        let prec = format!("{precision:?}").to_lowercase();
        rows.push(Row {
            section: "train-step",
            item: format!("{label} {name} batch {batch}"),
            device: dev.clone(),
            precision: prec.clone(),
            value,
            unit: "ms per step (median)".into(),
            tolerance: String::new(),
            ok,
            note,
        });
        rows.push(Row {
            section: "train-step",
            item: format!("{label} {name} batch {batch}"),
            device: dev,
            precision: prec,
            value: peak
                .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
                .unwrap_or_default(),
            unit: if device.is_cuda() {
                "peak MiB allocated"
            } else {
                "peak MiB resident (process)"
            }
            .into(),
            tolerance: String::new(),
            ok: String::new(),
            note: String::new(),
        });
    }
    rows
}

/// A two-epoch grid (tiny ViT, synthetic images, three methods) on `device`, through the
/// same library call as `dka grid`.
/// DKA's maps on the paper's models: (label, batch, channels, side, kernel side once cropped
/// to what the map reaches).
const CONV_SHAPES: [(&str, i64, i64, i64, i64); 4] = [
    ("vit-b16 224 b8 d16 14x14", 8, 16, 14, 27),
    ("vit-b16 224 b8 d192 14x14", 8, 192, 14, 27),
    ("vit-b16 512 b2 d192 32x32", 2, 192, 32, 51),
    ("vit-b16 1024 b1 d192 64x64", 1, 192, 64, 51),
];

/// Each exact path of DKA's depthwise convolutions, forward + backward, on `device`
/// (`dka_core::dka::measure_paths`, under autocast for bf16), and whether the fixed rule of
/// `conv_path = "auto"` (made from CPU measurements) picks the fastest; where it does not,
/// `conv_path = "tuned"` measures per machine.
fn conv_rows(
    device: Device,
    precision: Precision,
    shapes: &[(&str, i64, i64, i64, i64)],
) -> Vec<Row> {
    use dka_core::dka::{measure_paths, ConvPath};
    let amp = Amp::new(precision, device);
    let mut rows = Vec::new();
    for &(label, b, c, side, k) in shapes {
        let times = amp.run(|| measure_paths([b, c, side, side], k, k, amp.kind(), device, 5));
        let row = |item: String, value: String, unit: &str| Row {
            section: "dka-conv",
            item,
            device: device_name(device),
            precision: format!("{precision:?}").to_lowercase(),
            value,
            unit: unit.into(),
            tolerance: String::new(),
            ok: String::new(),
            note: String::new(),
        };
        for t in &times {
            rows.push(row(
                format!("{label} {:?}", t.path),
                format!("{:.3}", t.ms),
                "ms",
            ));
        }
        let fastest = times
            .iter()
            .min_by(|a, b| a.ms.total_cmp(&b.ms))
            .map(|t| t.path);
        let auto = ConvPath::Auto.choose(k, k, side, side);
        let mut r = row(format!("{label} auto rule"), format!("{auto:?}"), "");
        r.note = match fastest {
            Some(f) if f == auto => "the fastest measured".into(),
            Some(f) => format!("fastest measured: {f:?} (conv_path = \"tuned\" would take it)"),
            None => String::new(),
        };
        rows.push(r);
    }
    rows
}

fn grid_row(device: Device) -> Row {
    let started = std::time::Instant::now();
    let tmp = std::env::temp_dir().join(format!("dka-gpu-check-{}", std::process::id()));
    let result = tiny_grid(&tmp, device);
    let _ = std::fs::remove_dir_all(&tmp);
    let (ok, note) = match result {
        Ok(0) => ("true".to_string(), String::new()),
        Ok(failed) => ("false".to_string(), format!("{failed} run(s) failed")),
        Err(e) => ("false".to_string(), format!("{e:#}")),
    };
    Row {
        section: "grid",
        item: "tiny ViT, 3 methods x 2 epochs, synthetic images".into(),
        device: device_name(device),
        precision: "auto".into(),
        value: format!("{:.1}", started.elapsed().as_secs_f64()),
        unit: "s".into(),
        tolerance: String::new(),
        ok,
        note,
    }
}

/// Writes the tiny grid's experiment and data under `tmp` and runs it; returns how many runs
/// failed.
fn tiny_grid(tmp: &Path, device: Device) -> anyhow::Result<usize> {
    let _ = std::fs::remove_dir_all(tmp);
    let data = tmp.join("synth");
    let synth = dka_data::synth::SynthSpec {
        classes: 3,
        per_class: 24,
        size: 32,
        seed: 0,
    };
    dka_data::synth::write_folder_dataset(&data, &synth)?;
    let exp = tmp.join("exp.toml");
    std::fs::write(
        &exp,
        format!(
            "name = \"gpu-check\"\ntitle = \"gpu check\"\nmetric = \"accuracy\"\nrows = \"method\"\ncolumns = [\"dataset\"]\n\n\
             [base]\nbackbone = \"{}\"\nimg_size = 32\nepochs = 2\nbatch_size = 16\naugment = true\n\n\
             [grid]\nmethod = [{{ name = \"linear\" }}, {{ name = \"lora\" }}, {{ name = \"dka\" }}]\ndataset = [\"folder\"]\n",
            tmp.join("vit.json").display()
        ),
    )?;
    std::fs::write(
        tmp.join("vit.json"),
        r#"{"arch": "vit", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 0}"#,
    )?;
    let options = ExperimentOptions {
        experiment: exp,
        out: Some(tmp.join("out")),
        sources: Sources {
            data: vec![format!("folder={}", data.display())],
            weights: vec!["none".into()],
            device: match device {
                Device::Cuda(i) => DeviceArg::Cuda(i),
                _ => DeviceArg::Cpu,
            },
            cache_dir: Some(tmp.join("cache")),
            ..Default::default()
        },
        // Several visible GPUs: the grid runs one worker on each (`dka grid --workers`).
        workers: match device {
            Device::Cuda(_) => (tch::Cuda::device_count() as usize).max(1),
            _ => 1,
        },
        ..Default::default()
    };
    if options.workers > 1 {
        tracing::info!(
            "gpu-check: the short grid on {} GPUs, one worker each",
            options.workers
        );
    }
    Ok(run_experiment(&options)?.failed.len())
}

/// Runs the checks and writes the CSV (and its `.meta.json`); returns the rows. Whether
/// CUDA was usable is the first rows' business: without it only the CPU part runs.
pub fn check(a: &GpuCheckOptions) -> anyhow::Result<Vec<Row>> {
    let cuda = tch::Cuda::is_available() && (a.cuda as i64) < tch::Cuda::device_count();
    let gpu = Device::Cuda(a.cuda);
    let mut rows = vec![
        Row::info(
            "libtorch",
            option_env!("DKA_LIBTORCH_VERSION").unwrap_or("unknown"),
        ),
        Row::info("cuda usable", cuda),
        Row::info(
            "nvidia driver",
            crate::util::device::nvidia_driver().unwrap_or_else(|| "none seen".into()),
        ),
    ];
    if let Some(why) = crate::util::device::cuda_diagnosis() {
        let mut r = Row::info("cuda diagnosis", "not usable");
        r.ok = "false".into();
        r.note = why;
        rows.push(r);
    }
    if cuda {
        rows.push(Row::info("gpu", cuda_device_name(gpu).unwrap_or_default()));
        rows.push(Row::info(
            "bf16 native",
            cuda_bf16_native(gpu).map_or("unknown".into(), |b| b.to_string()),
        ));
        rows.push(Row::info("cudnn", tch::utils::version_cudnn()));
    }
    let mut devices = vec![
        (Device::Cpu, Precision::Fp32),
        (Device::Cpu, Precision::Bf16),
    ];
    if cuda {
        devices.extend([(gpu, Precision::Fp32), (gpu, Precision::Bf16)]);
    }
    rows.extend(forward_rows(&a.fixtures, &devices));
    let steps_on = if cuda {
        Some((gpu, Precision::Bf16))
    } else {
        a.cpu_steps.then_some((Device::Cpu, Precision::Fp32))
    };
    if let Some((device, precision)) = steps_on {
        // On the CPU (a test of this command) the smallest shape only; `dka bench conv` has
        // the CPU's numbers.
        let shapes = if device.is_cuda() {
            &CONV_SHAPES[..]
        } else {
            &CONV_SHAPES[..1]
        };
        rows.extend(conv_rows(device, precision, shapes));
        rows.extend(step_rows(&a.backbone, device, precision, a.batch, a.steps));
        if !a.no_grid {
            rows.push(grid_row(device));
        }
    }
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &rows {
        w.serialize(r)?;
    }
    crate::util::fs::write_atomic(&a.out, &w.into_inner()?)?;
    crate::util::fs::write_atomic(
        &a.out.with_extension("meta.json"),
        serde_json::to_string_pretty(&crate::util::provenance::machine())?.as_bytes(),
    )?;
    Ok(rows)
}
