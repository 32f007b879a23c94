//! `dka bench conv`: forward+backward time of DKA's depthwise convolutions, the plain
//! two-conv reference against the exact fast path, on the shapes of the paper's models.
//! Writes a CSV (shape, path, median_ms, speedup, max_rel_diff) and a JSON sidecar that says
//! how the numbers were made.
use anyhow::Context;
use dka_core::dka::{ConvPath, Kernels};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// CSV to write.
    #[arg(long, default_value = "results/bench/dka_conv.csv")]
    output: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// Timed repetitions per path (2 when one pass takes over two seconds).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Large and small kernel sizes.
    #[arg(long, default_value_t = 51)]
    large: i64,
    #[arg(long, default_value_t = 5)]
    small: i64,
    /// Skip the ViT-B/16 training-step rows (DKA vs the Adapter baseline).
    #[arg(long)]
    no_step: bool,
}

/// Median time of one training step of ViT-B/16 (random weights, frozen, 224x224, batch
/// `batch`) adapted by `method`: forward, cross-entropy on a 3-class head, backward, Adam.
fn train_step_ms(
    method: &dka_baselines::MethodConfig,
    batch: i64,
    reps: usize,
) -> anyhow::Result<f64> {
    use tch::nn::{Module, OptimizerConfig};
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
    let mut opt = tch::nn::Adam::default().build(&avs, 1e-3)?;
    let x = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&(0..batch).map(|i| i % 3).collect::<Vec<i64>>());
    let mut step = || {
        let t = Instant::now();
        let f = backbone.forward_features(&x, true);
        let loss = head
            .forward(&backbone.pool(&f))
            .cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        t.elapsed().as_secs_f64() * 1e3
    };
    step();
    let mut ms: Vec<f64> = (0..reps).map(|_| step()).collect();
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// (label, channels, h, w)
const SHAPES: [(&str, i64, i64, i64); 7] = [
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

pub fn run(a: Args) -> anyhow::Result<()> {
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
        for path in [ConvPath::Direct, ConvPath::Fft] {
            let (t, o) = time(&k, &z, path, a.reps);
            let rel =
                (&o - &o_ref).abs().max().double_value(&[]) / o_ref.abs().max().double_value(&[]);
            let name = format!(
                "{}{}",
                format!("{path:?}").to_lowercase(),
                if path == auto { " (auto)" } else { "" }
            );
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
        let adapter = train_step_ms(
            &MethodConfig::by_name("adapter").expect("known"),
            a.batch,
            3,
        )?;
        tracing::info!("{shape}: adapter d64 {adapter:.0} ms");
        rows.push((shape.clone(), "adapter d64".into(), adapter, 1.0, f64::NAN));
        for d_hat in [16, 192] {
            let dka = MethodConfig::Dka(DkaConfig {
                d_hat,
                ..DkaConfig::authors()
            });
            let t = train_step_ms(&dka, a.batch, 3)?;
            tracing::info!(
                "{shape}: dka d{d_hat} mona {t:.0} ms = {:.2} x adapter",
                t / adapter
            );
            rows.push((
                shape.clone(),
                format!("dka d{d_hat} mona"),
                t,
                adapter / t,
                f64::NAN,
            ));
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
        "what": "DKA depthwise convolutions, forward + backward, plain two-conv reference vs exact fast path (merge, crop, channels-last / FFT)",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "batch": a.batch, "kernels": [a.large, a.small], "reps": a.reps, "note": "median of reps after one warm-up; 2 reps when one pass takes over 2 s; the fast path used by default is marked (auto). Train-step rows: median of 3 steps after one warm-up, ViT-B/16 with random weights (speed does not depend on them), speedup = adapter time / this time (below 1: slower than the Adapter baseline), max_rel_diff empty",
        "machine": crate::info::machine(),
    });
    let meta_path = a.output.with_extension("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)?;
    tracing::info!("wrote {} and {}", a.output.display(), meta_path.display());
    Ok(())
}
