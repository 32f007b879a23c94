//! Methods whose modules start as the identity (Adapter: zero-init Up; LoRA: B = 0; DKA with
//! zero-init Up) give exactly the backbone's effective receptive field at initialisation:
//! the same forward values and the same input gradients, bit for bit.
use dka_baselines::MethodConfig;
use dka_core::dka::{DkaConfig, Init};
use dka_core::erf::{backbone_feature_map, ErfAccumulator};
use dka_core::{Backbone, BackboneConfig};
use tch::{nn, Device, Kind, Tensor};

const VIT: &str = r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":2,"num_heads":2,"mlp_ratio":2.0,"num_classes":0}"#;

fn erf(model: &Backbone, x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.size4().unwrap();
    let mut acc = ErfAccumulator::new(h, w);
    let f = |x: &Tensor| backbone_feature_map(model, x);
    assert_eq!(acc.add(&f, x).unwrap(), x.size()[0] as usize);
    acc.mean()
}

#[test]
fn identity_at_init_methods_keep_the_backbone_erf() {
    let cfg = BackboneConfig::from_json_str(VIT).unwrap();
    // Non-square input (4x6 patch grid): the ERF map is 32x48.
    let x = (Tensor::arange(3 * 3 * 32 * 48, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([3, 3, 32, 48]);
    let methods = [
        MethodConfig::by_name("adapter").unwrap(),
        MethodConfig::by_name("lora").unwrap(),
        MethodConfig::Dka(DkaConfig {
            init: Init::ZeroUp,
            d_hat: 4,
            ..DkaConfig::authors()
        }),
    ];
    for method in methods {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Backbone::new(&vs.root(), &cfg).unwrap();
        let bare = erf(&model, &x);
        assert!(bare.max().double_value(&[]) > 0.0);
        let avs = nn::VarStore::new(Device::Cpu);
        method.method().attach(&mut model, &avs.root()).unwrap();
        let adapted = erf(&model, &x);
        assert!(
            adapted.equal(&bare),
            "{}: ERF at init differs from the backbone's (max |diff| {})",
            method.method().name(),
            (&adapted - &bare).abs().max().double_value(&[])
        );
        // And the check can fail: a non-zero Up/B changes the ERF.
        tch::no_grad(|| {
            for (name, mut t) in avs.variables() {
                if name.ends_with("up.weight") || name.contains("lora_B") {
                    let _ = t.fill_(0.05);
                }
            }
        });
        let moved = erf(&model, &x);
        assert!(
            !moved.equal(&bare),
            "{}: perturbing the zero-initialised tensor must change the ERF",
            method.method().name()
        );
    }
}
