//! `dka bench conv`: forward+backward time of DKA's depthwise convolutions, the plain
//! two-conv reference against each exact fast path and the one `conv_path = "tuned"` chooses,
//! on the shapes of the paper's models and of the demo's.
//! Writes a CSV (shape, path, median_ms, speedup, max_rel_diff) and a JSON sidecar that says
//! how the numbers were made.
use anyhow::Context;
use dka_core::dka::{ConvPath, Kernels};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What `dka bench conv` measures and where it writes.
#[derive(Debug, Clone)]
pub struct ConvOptions {
    /// CSV to write.
    pub output: PathBuf,
    /// Batch size.
    pub batch: i64,
    /// Timed repetitions per path (2 when one pass takes over two seconds).
    pub reps: usize,
    /// Large and small kernel sizes.
    pub large: i64,
    pub small: i64,
    /// Skip the ViT-B/16 training-step rows (DKA vs the Adapter baseline).
    pub no_step: bool,
}

/// One training step of ViT-B/16 (random weights, frozen, 224x224) adapted by a method:
/// forward, cross-entropy on a 3-class head, backward, Adam.
struct StepBench {
    backbone: dka_core::Backbone,
    head: tch::nn::Linear,
    opt: tch::nn::Optimizer,
    x: Tensor,
    y: Tensor,
    _stores: (tch::nn::VarStore, tch::nn::VarStore),
}

impl StepBench {
    fn new(method: &dka_baselines::MethodConfig, batch: i64) -> anyhow::Result<Self> {
        use tch::nn::OptimizerConfig;
        tch::manual_seed(0);
        let mut cfg = dka_core::BackboneConfig::preset("vit_base_patch16_224").expect("preset");
        cfg.set_num_classes(0);
        let mut vs = tch::nn::VarStore::new(Device::Cpu);
        let mut backbone = dka_core::Backbone::new(&vs.root(), &cfg)?;
        vs.freeze();
        let avs = tch::nn::VarStore::new(Device::Cpu);
        method.method().attach(&mut backbone, &avs.root())?;
        let head = tch::nn::linear(
            avs.root() / "task_head",
            backbone.num_features(),
            3,
            Default::default(),
        );
        let opt = tch::nn::Adam::default().build(&avs, 1e-3)?;
        let x = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&(0..batch).map(|i| i % 3).collect::<Vec<i64>>());
        Ok(Self {
            backbone,
            head,
            opt,
            x,
            y,
            _stores: (vs, avs),
        })
    }

    fn step_ms(&mut self) -> f64 {
        use tch::nn::Module;
        let t = Instant::now();
        let f = self.backbone.forward_features(&self.x, true);
        let loss = self
            .head
            .forward(&self.backbone.pool(&f))
            .cross_entropy_for_logits(&self.y);
        self.opt.backward_step(&loss);
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// Median step times of several methods, measured in interleaved rounds (one step of each
/// method per round, after one warm-up step each) so that drifts of the machine's speed hit
/// every method alike.
fn interleaved_steps(
    methods: &[dka_baselines::MethodConfig],
    batch: i64,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut benches = methods
        .iter()
        .map(|m| StepBench::new(m, batch))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for b in benches.iter_mut() {
        b.step_ms();
    }
    let mut times = vec![Vec::new(); benches.len()];
    for _ in 0..rounds {
        for (b, t) in benches.iter_mut().zip(times.iter_mut()) {
            t.push(b.step_ms());
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// (label, channels, h, w)
const SHAPES: [(&str, i64, i64, i64); 10] = [
    ("dinov2 demo d16 6x6", 16, 6, 6),
    ("tinyvit demo d16 12x12", 16, 12, 12),
    ("tinyvit demo d16 24x24", 16, 24, 24),
    ("vit d16 14x14", 16, 14, 14),
    ("vit d192 14x14", 192, 14, 14),
    ("vit d16 32x32", 16, 32, 32),
    ("vit d192 32x32", 192, 32, 32),
    ("vit d16 64x64", 16, 64, 64),
    ("vit d192 64x64", 192, 64, 64),
    ("cnn c64 56x56", 64, 56, 56),
];

fn kernels(c: i64, large: i64, small: i64) -> Kernels {
    let opts = (Kind::Float, Device::Cpu);
    let k = |s: i64| (Tensor::randn([c, 1, s, s], opts) * 0.05).set_requires_grad(true);
    Kernels::Fixed {
        large: Some((k(large), None)),
        small: Some((k(small), None)),
    }
}

/// Median wall time of forward+backward passes after one warm-up (`reps` of them, 2 when a
/// pass takes over two seconds), and the output.
fn time(k: &Kernels, z: &Tensor, path: ConvPath, reps: usize) -> (f64, Tensor) {
    let step = || {
        let t = Instant::now();
        let out = k.forward(z, path);
        out.square().sum(Kind::Float).backward();
        (t.elapsed().as_secs_f64() * 1e3, out.detach())
    };
    let (first, out) = step();
    let reps = if first > 2000.0 { 2 } else { reps };
    let mut ms: Vec<f64> = (0..reps).map(|_| step().0).collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], out)
}

pub fn run(a: &ConvOptions) -> anyhow::Result<()> {
    if let Some(dir) = a.output.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut rows = Vec::new();
    for (label, c, h, w) in SHAPES {
        tch::manual_seed(0);
        let k = kernels(c, a.large, a.small);
        let z =
            Tensor::randn([a.batch, c, h, w], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let shape = format!("{label} b{} k{}+{}", a.batch, a.large, a.small);
        let (t_ref, o_ref) = time(&k, &z, ConvPath::Reference, a.reps);
        rows.push((shape.clone(), "reference".to_string(), t_ref, 1.0, 0.0));
        let (kh, kw) = (a.large.min(2 * h - 1), a.large.min(2 * w - 1));
        let auto = ConvPath::Auto.choose(kh, kw, h, w);
        for path in [
            ConvPath::Direct,
            ConvPath::Fft,
            ConvPath::FftToeplitz,
            ConvPath::Toeplitz,
            ConvPath::Tuned,
        ] {
            if path == ConvPath::Toeplitz && !dka_core::dka::toeplitz_fits(c, h, w) {
                continue;
            }
            let (t, o) = time(&k, &z, path, a.reps);
            let rel =
                (&o - &o_ref).abs().max().double_value(&[]) / o_ref.abs().max().double_value(&[]);
            let name = if path == ConvPath::Tuned {
                let chosen = dka_core::dka::tuned_choices()
                    .into_iter()
                    .find(|(_, _, s, _)| *s == [a.batch, c, h, w, kh, kw])
                    .map_or("?".to_string(), |(.., p)| format!("{p:?}").to_lowercase());
                format!("tuned: {chosen}")
            } else {
                format!(
                    "{}{}",
                    format!("{path:?}").to_lowercase(),
                    if path == auto { " (auto)" } else { "" }
                )
            };
            tracing::info!(
                "{shape}: reference {t_ref:.1} ms, {name} {t:.1} ms, x{:.1}",
                t_ref / t
            );
            rows.push((shape.clone(), name, t, t_ref / t, rel));
        }
    }
    if !a.no_step {
        use dka_baselines::MethodConfig;
        use dka_core::dka::DkaConfig;
        let shape = format!("vit_base_patch16_224 train step b{} 224 frozen", a.batch);
        let methods = [
            MethodConfig::by_name("adapter").expect("known"),
            MethodConfig::Dka(DkaConfig {
                d_hat: 16,
                ..DkaConfig::authors()
            }),
            MethodConfig::Dka(DkaConfig {
                d_hat: 192,
                ..DkaConfig::authors()
            }),
            MethodConfig::Dka(DkaConfig {
                d_hat: 192,
                conv_path: ConvPath::Tuned,
                ..DkaConfig::authors()
            }),
        ];
        let t = interleaved_steps(&methods, a.batch, 5)?;
        let adapter = t[0];
        tracing::info!("{shape}: adapter d64 {adapter:.0} ms");
        rows.push((shape.clone(), "adapter d64".into(), adapter, 1.0, f64::NAN));
        for (name, t) in [
            ("dka d16 mona", t[1]),
            ("dka d192 mona", t[2]),
            ("dka d192 mona tuned", t[3]),
        ] {
            tracing::info!("{shape}: {name} {t:.0} ms = {:.2} x adapter", t / adapter);
            rows.push((shape.clone(), name.to_string(), t, adapter / t, f64::NAN));
        }
    }
    let tmp = a.output.with_extension("csv.partial");
    {
        let mut w = csv::Writer::from_path(&tmp).with_context(|| tmp.display().to_string())?;
        w.write_record(["shape", "path", "median_ms", "speedup", "max_rel_diff"])?;
        for (shape, path, ms, speedup, rel) in &rows {
            let rel = if rel.is_nan() {
                String::new()
            } else {
                format!("{rel:.2e}")
            };
            w.write_record([
                shape.as_str(),
                path,
                &format!("{ms:.3}"),
                &format!("{speedup:.2}"),
                &rel,
            ])?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, &a.output)?;
    let meta = serde_json::json!({
        "what": "DKA depthwise convolutions, forward + backward, plain two-conv reference vs each exact fast path (merge, crop; direct channels-last, FFT, FFT-Toeplitz, full Toeplitz) and the tuned choice",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "batch": a.batch, "kernels": [a.large, a.small], "reps": a.reps, "note": "median of reps after one warm-up; 2 reps when one pass takes over 2 s; the fast path used by default is marked (auto); `tuned: <path>` is the path conv_path = \"tuned\" chose for the shape in this process (its own interleaved measurement), timed like the others. Train-step rows: median of 5 interleaved rounds (one step of each method per round) after one warm-up step each, ViT-B/16 with random weights (speed does not depend on them), speedup = adapter time / this time (below 1: slower than the Adapter baseline), max_rel_diff empty",
        "machine": crate::util::provenance::machine(),
    });
    let meta_path = a.output.with_extension("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)?;
    tracing::info!("wrote {} and {}", a.output.display(), meta_path.display());
    Ok(())
}
