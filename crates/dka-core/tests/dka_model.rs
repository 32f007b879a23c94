//! DKA inside the backbones: identity at start with zero-init `Up`, not with the authors'
//! init; parameter counts equal the formula; `mona` shares one instance per block.
use dka_core::dka::{DkaConfig, Init, Placement};
use dka_core::method::Method;
use dka_core::{Backbone, BackboneConfig};
use tch::{nn, Device, Kind, Tensor};

fn small(arch: &str) -> (BackboneConfig, Vec<i64>) {
    let json = match arch {
        "vit" => {
            r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":2,"num_heads":2,"num_classes":0}"#
        }
        "resnet" => {
            r#"{"arch":"resnet","block":"bottleneck","layers":[1,1,1,1],"channels":[4,4,8,8],"num_classes":0}"#
        }
        _ => {
            r#"{"arch":"samvit","img_size":32,"patch_size":8,"embed_dim":16,"depth":2,"num_heads":2,"window_size":3,"global_attn_indexes":[1],"neck_chans":8}"#
        }
    };
    // Non-square inputs: the adapter must use the model's grid, not sqrt(tokens).
    (
        BackboneConfig::from_json_str(json).unwrap(),
        vec![2, 3, 32, 48],
    )
}

fn features(m: &Backbone, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward_features(x, false).x)
}

fn check_identity(arch: &str) {
    let (cfg, shape) = small(arch);
    let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
    for placement in [Placement::Mona, Placement::Branch, Placement::Block] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Backbone::new(&vs.root(), &cfg).unwrap();
        let bare = features(&model, &x);
        let zero = DkaConfig {
            init: Init::ZeroUp,
            placement,
            d_hat: 4,
            ..DkaConfig::authors()
        };
        let avs = nn::VarStore::new(Device::Cpu);
        zero.attach(&mut model, &avs.root()).unwrap();
        assert!(
            features(&model, &x).equal(&bare),
            "{arch} {placement:?}: zero-init Up must leave the backbone unchanged"
        );

        let authors = DkaConfig {
            init: Init::Authors,
            ..zero.clone()
        };
        let avs = nn::VarStore::new(Device::Cpu);
        authors.attach(&mut model, &avs.root()).unwrap();
        let diff = (features(&model, &x) - &bare).abs().max().double_value(&[]);
        assert!(
            diff > 1e-7,
            "{arch} {placement:?}: the authors' init must change the output"
        );
    }
}

#[test]
fn zero_init_up_is_the_identity_on_vit() {
    check_identity("vit");
}

#[test]
fn zero_init_up_is_the_identity_on_resnet() {
    check_identity("resnet");
}

#[test]
fn zero_init_up_is_the_identity_on_sam_vit() {
    check_identity("samvit");
}

#[test]
fn parameter_counts_follow_the_formula() {
    let (cfg, _) = small("vit");
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &cfg).unwrap();
    for (placement, per_block) in [
        (Placement::Mona, 1),
        (Placement::Branch, 2),
        (Placement::Block, 1),
    ] {
        for c in [
            DkaConfig {
                placement,
                ..DkaConfig::authors()
            },
            DkaConfig {
                placement,
                ..DkaConfig::paper()
            },
        ] {
            let avs = nn::VarStore::new(Device::Cpu);
            c.attach(&mut model, &avs.root()).unwrap();
            let n: i64 = avs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
            // Down D*d + Up d*D + 51^2 d + 5^2 d (+ biases d + D + 2d with bias), per module.
            let d = 16;
            let per_module =
                2 * 32 * d + 51 * 51 * d + 5 * 5 * d + if c.bias { d + 32 + 2 * d } else { 0 };
            assert_eq!(
                n,
                per_module * per_block * 2,
                "{placement:?} bias={}",
                c.bias
            );
            assert_eq!(c.params_per_module(32), per_module);
        }
    }
    let avs = nn::VarStore::new(Device::Cpu);
    DkaConfig::authors()
        .attach(&mut model, &avs.root())
        .unwrap();
    let mut names: Vec<String> = avs.variables().into_keys().collect();
    names.sort();
    assert_eq!(
        names[..4],
        [
            "blocks.0.dka.conv_large.weight",
            "blocks.0.dka.conv_small.weight",
            "blocks.0.dka.down.weight",
            "blocks.0.dka.up.weight"
        ]
    );
}

#[test]
fn layers_select_blocks_and_a_bad_config_is_refused() {
    let (cfg, _) = small("vit");
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &cfg).unwrap();
    let avs = nn::VarStore::new(Device::Cpu);
    DkaConfig {
        layers: Some(vec![1]),
        ..DkaConfig::authors()
    }
    .attach(&mut model, &avs.root())
    .unwrap();
    assert!(avs.variables().keys().all(|k| k.starts_with("blocks.1.")));
    let even = DkaConfig {
        large_kernel: 50,
        ..DkaConfig::authors()
    };
    let err = even
        .attach(&mut model, &nn::VarStore::new(Device::Cpu).root())
        .unwrap_err()
        .to_string();
    assert!(err.contains("odd"), "{err}");
}
