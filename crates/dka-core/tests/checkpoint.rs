//! Activation checkpointing (`Backbone::forward_backward` with `checkpoint_blocks`) gives the
//! loss and the gradients of the plain step, up to float round-off: ViT and SAM ViT with DKA
//! in every block, with DKA in later blocks only (a frozen prefix that runs once without
//! autograd), and with every backbone tensor trained (the stem's gradients too).
use dka_core::dka::DkaConfig;
use dka_core::method::Method;
use dka_core::{Backbone, BackboneConfig, Features};
use tch::{nn, Device, Kind, Tensor};

const VIT: &str = r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":3,"num_heads":2,"num_classes":0}"#;
const SAM: &str = r#"{"arch":"samvit","img_size":32,"patch_size":8,"embed_dim":16,"depth":3,"num_heads":2,"window_size":3,"global_attn_indexes":[1],"neck_chans":8}"#;

struct Setup {
    backbone: Backbone,
    stores: Vec<nn::VarStore>,
}

fn build(json: &str, layers: Option<Vec<usize>>, train_backbone: bool) -> Setup {
    tch::manual_seed(7);
    let cfg = BackboneConfig::from_json_str(json).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut backbone = Backbone::new(&vs.root(), &cfg).unwrap();
    if !train_backbone {
        vs.freeze();
    }
    let avs = nn::VarStore::new(Device::Cpu);
    let dka = DkaConfig {
        d_hat: 4,
        dropout: 0.0,
        layers,
        ..DkaConfig::authors()
    };
    dka.attach(&mut backbone, &avs.root()).unwrap();
    Setup {
        backbone,
        stores: vec![vs, avs],
    }
}

/// A loss every feature moves: a fixed weighting of the features plus their mean square. (The
/// mean square and the mean alone are nearly constant after SAM's LayerNorm neck, which leaves
/// only round-off in the gradients.)
fn loss(f: &Features) -> Tensor {
    let n = f.x.numel() as i64;
    let w = Tensor::arange(n, (Kind::Float, f.x.device()))
        .sin()
        .view(f.x.size().as_slice());
    (&f.x * w).mean(Kind::Float) + f.x.square().mean(Kind::Float)
}

/// Loss and the gradients of every trainable tensor, by name.
fn step(s: &Setup, x: &Tensor, checkpoint: bool) -> (f64, Vec<(String, Tensor)>) {
    for vs in &s.stores {
        for (_, t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
    let l = s.backbone.forward_backward(x, true, checkpoint, loss);
    let mut grads = Vec::new();
    for (k, vs) in s.stores.iter().enumerate() {
        let mut v = vs.variables().into_iter().collect::<Vec<_>>();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in v {
            if t.requires_grad() {
                grads.push((format!("{k}/{name}"), t.grad().copy()));
            }
        }
    }
    (l.double_value(&[]), grads)
}

fn check(json: &str, layers: Option<Vec<usize>>, train_backbone: bool) {
    let s = build(json, layers.clone(), train_backbone);
    let x = Tensor::randn([2, 3, 32, 40], (Kind::Float, Device::Cpu));
    let (l0, g0) = step(&s, &x, false);
    let (l1, g1) = step(&s, &x, true);
    assert!(
        (l0 - l1).abs() <= 1e-6 * l0.abs().max(1.0),
        "loss {l0} vs {l1}"
    );
    assert_eq!(g0.len(), g1.len());
    assert!(!g0.is_empty());
    for ((name, a), (_, b)) in g0.iter().zip(&g1) {
        assert!(a.defined() && b.defined(), "{name}: gradient missing");
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        let err = (a - b).abs().max().double_value(&[]) / scale;
        assert!(
            err <= 1e-4,
            "{json} layers {layers:?} backbone trained {train_backbone}: {name}: rel err {err:e}"
        );
    }
}

#[test]
fn vit_checkpointed_step_equals_the_plain_step() {
    check(VIT, None, false);
    check(VIT, Some(vec![1, 2]), false);
    check(VIT, None, true);
}

#[test]
fn samvit_checkpointed_step_equals_the_plain_step() {
    check(SAM, None, false);
    check(SAM, Some(vec![2]), false);
    check(SAM, None, true);
}

#[test]
fn the_frozen_prefix_runs_once_without_autograd() {
    let s = build(VIT, Some(vec![2]), false);
    let Backbone::Vit(v) = &s.backbone else {
        unreachable!()
    };
    assert_eq!(v.first_trained_block(), 2);
    let s = build(VIT, None, true);
    let Backbone::Vit(v) = &s.backbone else {
        unreachable!()
    };
    assert_eq!(v.first_trained_block(), 0);
}
