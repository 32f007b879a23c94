//! bf16 parity with timm: our backbones under CPU bf16 autocast (through `dka features
//! --precision bf16`'s library call) against the reference's features under
//! `torch.autocast("cpu", torch.bfloat16)` (the fixtures' `features_bf16*`, written by
//! `python/make_fixtures.py`).
//!
//! Tolerance: bf16 keeps 8 bits of mantissa, so neither side is exact; what must hold is that
//! ours is as close to the reference's bf16 output as the two implementations' round-off
//! allows. The measure is the largest |ours − reference bf16| against the size of bf16's own
//! effect, the largest |reference bf16 − reference fp32|: ours must stay within a tenth of it
//! (a backbone that ran the residual stream, a layer scale or any other step in another
//! precision than the reference lands at the size of bf16's effect itself).
//!
//! On the CPU our attention is not the reference's call for these small bf16 inputs:
//! `dka_core::attention` computes the explicit `softmax(q kᵀ·scale + bias) v` where timm's ViTs
//! call libtorch's fused function (whose flash kernel is slow here), SAM's in the 4-D layout
//! (timm's is 3-D), and TinyViT's neck normalises with `layer_norm` (fp32 under autocast) where
//! LiteMedSAM's hand-written LayerNorm2d rounds its mean and variance to bf16. The same
//! arithmetic in fp32, other round-off in bf16. So the comparison is with the reference
//! computed through those same kernels (`features_bf16_fused*`, written with
//! `python/make_fixtures.py`'s `attention_as_dka`); the plain reference's distance and both
//! distances to the fp32 output are printed beside it. The table is printed (`cargo test
//! --test bf16_parity -- --nocapture`).
use dka_bench::analysis::features::{extract, FeaturesOptions};
use dka_bench::config::run::Precision;
use dka_bench::util::device::DeviceArg;
use dka_core::weights::read_safetensors;
use std::collections::HashMap;

mod common;
use common::fixture;
use tch::{Kind, Tensor};

/// Our error must stay below this fraction of bf16's own effect on timm's output.
const OF_BF16_EFFECT: f64 = 0.1;

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// One input of one fixture.
struct Row {
    what: String,
    /// max |ours − reference bf16| (the fused-attention reference where there is one).
    ours: f64,
    /// max |reference bf16 − reference fp32|.
    effect: f64,
    /// max |ours − reference bf16| against the plain reference, where a fused one is used.
    vs_plain: Option<f64>,
    /// max |ours − fp32| and max |plain reference bf16 − fp32|.
    to_fp32: (f64, f64),
}

fn measure(name: &str) -> Vec<Row> {
    let dir = fixture(name);
    let io: HashMap<String, Tensor> = read_safetensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let mut inputs: Vec<&String> = io.keys().filter(|k| k.starts_with("input")).collect();
    inputs.sort();
    for key in inputs {
        let suffix = &key["input".len()..];
        let Some(plain_bf16) = io.get(&format!("features_bf16{suffix}")) else {
            panic!("{name}: no features_bf16{suffix}: rerun `just fixtures`");
        };
        let fused = io.get(&format!("features_bf16_fused{suffix}"));
        let theirs_bf16 = fused.unwrap_or(plain_bf16);
        let theirs = &io[&format!("features{suffix}")];
        let input = tmp.path().join(format!("input{suffix}.safetensors"));
        Tensor::write_safetensors(&[("input", io[key].shallow_clone())], &input).unwrap();
        let output = tmp.path().join(format!("out{suffix}.safetensors"));
        extract(&FeaturesOptions {
            backbone: dir.join("config.json").display().to_string(),
            weights: dir.join("model.safetensors"),
            input,
            output: output.clone(),
            adapter: None,
            device: DeviceArg::Cpu,
            precision: Precision::Bf16,
        })
        .unwrap();
        let ours = read_safetensors(&output)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "features")
            .unwrap()
            .1;
        assert_eq!(ours.kind(), Kind::Float, "written as float32");
        assert_eq!(ours.size(), theirs_bf16.size());
        out.push(Row {
            what: format!("{name}{suffix}"),
            ours: max_abs(&ours, theirs_bf16),
            effect: max_abs(plain_bf16, theirs),
            vs_plain: fused.map(|_| max_abs(&ours, plain_bf16)),
            to_fp32: (max_abs(&ours, theirs), max_abs(plain_bf16, theirs)),
        });
    }
    out
}

#[test]
fn bf16_features_match_timm_under_cpu_autocast() {
    let mut rows = Vec::new();
    for name in [
        "vit_layerscale",
        "vit_resized",
        "resnet_bottleneck",
        "samvit",
        "tinyvit",
    ] {
        rows.extend(measure(name));
    }
    println!(
        "| fixture | max |ours − ref bf16| | max |ref bf16 − ref fp32| | ratio | max |ours − plain ref bf16| | max |ours − fp32| | max |plain ref bf16 − fp32| |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.3e} | {:.3e} | {:.3} | {} | {:.3e} | {:.3e} |",
            r.what,
            r.ours,
            r.effect,
            r.ours / r.effect,
            r.vs_plain.map_or("(same)".into(), |v| format!("{v:.3e}")),
            r.to_fp32.0,
            r.to_fp32.1
        );
    }
    for r in &rows {
        assert!(
            r.ours <= OF_BF16_EFFECT * r.effect,
            "{}: |ours − reference bf16| = {:.3e}, more than {OF_BF16_EFFECT} of bf16's own \
             effect on the reference ({:.3e})",
            r.what,
            r.ours,
            r.effect
        );
    }
}
