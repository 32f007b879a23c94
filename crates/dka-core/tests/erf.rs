//! The effective receptive field (RepLKNet's procedure, `dka_core::erf`):
//! - a stack of `n` k x k convolutions with positive weights has an ERF supported exactly on its
//!   theoretical receptive field, the `n(k−1)+1` square around the centre;
//! - the high-contribution area ratio of hand-made maps equals the hand computation;
//! - a ViT's ERF has the input's size and is finite and non-negative; ResNet, SAM and TinyViT
//!   encoders give a feature map and an ERF through the same function.
use dka_core::erf::{
    area_ratio, backbone_feature_map, high_contribution_area_ratios, normalised_log_map, AreaRatio,
    ErfAccumulator,
};
use dka_core::{Backbone, BackboneConfig};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// `n` k x k convolutions (stride 1, padding k/2, no bias) with positive weights.
fn conv_stack(vs: &nn::VarStore, n: usize, k: i64) -> Vec<nn::Conv2D> {
    let cfg = nn::ConvConfig {
        padding: k / 2,
        bias: false,
        ws_init: nn::Init::Uniform { lo: 0.1, up: 1.0 },
        ..Default::default()
    };
    (0..n)
        .map(|i| {
            let cin = if i == 0 { 3 } else { 4 };
            nn::conv2d(vs.root() / i, cin, 4, k, cfg)
        })
        .collect()
}

#[test]
fn a_conv_stack_has_exactly_its_theoretical_receptive_field() {
    let (n, k) = (3usize, 5i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let convs = conv_stack(&vs, n, k);
    let f = |x: &Tensor| convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
    // The receptive field is 2*half + 1 = n(k-1) + 1 = 13 wide.
    let half = (n as i64 * (k - 1)) / 2;
    // Odd, even and non-square inputs; the centre is pixel (H/2, W/2).
    for (hh, ww) in [(33i64, 33i64), (32, 28), (25, 40)] {
        let mut acc = ErfAccumulator::new(hh, ww);
        for batch in 0..2 {
            // Positive images: with positive weights every output and every path is positive.
            let x = Tensor::rand([2, 3, hh, ww], (Kind::Float, Device::Cpu)) + 0.1 + batch as f64;
            assert_eq!(acc.add(&f, &x).unwrap(), 2);
        }
        assert_eq!((acc.images(), acc.skipped()), (4, 0));
        let s = acc.sum();
        let (ch, cw) = (hh / 2, ww / 2);
        let inside = Tensor::zeros([hh, ww], (Kind::Bool, Device::Cpu));
        let _ = inside
            .narrow(0, ch - half, 2 * half + 1)
            .narrow(1, cw - half, 2 * half + 1)
            .fill_(1);
        let positive = s.gt(0.0);
        assert!(
            positive.equal(&inside),
            "{hh}x{ww}: ERF support differs from the {}x{} square at ({ch},{cw})",
            2 * half + 1,
            2 * half + 1
        );
        // The mean is the sum over the images.
        assert!(acc.mean().allclose(&(s / 4.0), 1e-12, 0.0, false));
    }
}

#[test]
fn images_with_non_finite_scores_are_skipped() {
    // sqrt of a negative centre pixel: NaN output and NaN gradient for that image only.
    let f = |x: &Tensor| x.sqrt();
    let x = Tensor::ones([3, 3, 8, 8], (Kind::Float, Device::Cpu));
    let _ = x.get(1).get(0).get(4).get(4).fill_(-1.0);
    let mut acc = ErfAccumulator::new(8, 8);
    assert_eq!(acc.add(&f, &x).unwrap(), 2);
    assert_eq!((acc.images(), acc.skipped()), (2, 1));
    // d/dx sqrt(x) at 1 is 1/2, three colour channels, two images: 3 at the centre pixel.
    assert_eq!(acc.sum().double_value(&[4, 4]), 3.0);
    assert_eq!(acc.sum().sum(Kind::Double).double_value(&[]), 3.0);
    // A batch of the wrong size is refused.
    let wrong = Tensor::ones([1, 3, 8, 9], (Kind::Float, Device::Cpu));
    assert!(acc.add(&f, &wrong).is_err());
}

fn ratio(side: i64, h: i64, w: i64) -> Option<AreaRatio> {
    Some(AreaRatio {
        side,
        ratio: side as f64 / h as f64 * (side as f64 / w as f64),
    })
}

#[test]
fn area_ratios_of_hand_made_maps() {
    // 8x8 map, uniform 4x4 block on rows/cols 2..=5; the centre pixel is (4, 4). The squares
    // are odd (side 3: rows 3..=5, side 5: rows 2..=6, side 7: rows 1..=7), so the 4x4 block
    // never fits exactly (a "0.25" answer is impossible under RepLKNet's definition):
    // side 3 holds 9 of the 16 pixels (0.5625), side 5 all of them.
    let m = Tensor::zeros([8, 8], (Kind::Double, Device::Cpu));
    let _ = m.narrow(0, 2, 4).narrow(1, 2, 4).fill_(1.0);
    assert_eq!(area_ratio(&m, 0.99), ratio(5, 8, 8)); // 25/64 = 0.390625
    assert_eq!(area_ratio(&m, 0.5), ratio(3, 8, 8)); // 9/64 = 0.140625
                                                     // "Exceeds", strictly, as in RepLKNet: exactly 0.5625 is not enough for side 3.
    assert_eq!(area_ratio(&m, 0.5625), ratio(5, 8, 8));

    // 9x9 map, value by Chebyshev distance r from the centre (4, 4): 8 at r=0, 2 on ring 1
    // (8 pixels, 16), 1 on ring 2 (16 pixels, 16), 0.5 on ring 3 (24 pixels, 12), 0.25 on
    // ring 4 (32 pixels, 8): total 60. Cumulative: side 3 holds 24/60 = 0.4, side 5 40/60,
    // side 7 52/60 = 0.867; side 9 (the whole map) is never a candidate (i < 9/2).
    let a = Tensor::arange(9, (Kind::Double, Device::Cpu)) - 4.0;
    let r = a.abs().unsqueeze(1).maximum(&a.abs().unsqueeze(0));
    let v = [8.0, 2.0, 1.0, 0.5, 0.25];
    let mut m = Tensor::zeros([9, 9], (Kind::Double, Device::Cpu));
    for (ring, val) in v.iter().enumerate() {
        let _ = m.masked_fill_(&r.eq(ring as f64), *val);
    }
    assert_eq!(m.sum(Kind::Double).double_value(&[]), 60.0);
    assert_eq!(area_ratio(&m, 0.2), ratio(3, 9, 9)); // 9/81
    assert_eq!(area_ratio(&m, 0.3), ratio(3, 9, 9));
    assert_eq!(area_ratio(&m, 0.5), ratio(5, 9, 9)); // 25/81
    assert_eq!(area_ratio(&m, 0.8), ratio(7, 9, 9)); // 49/81
    assert_eq!(area_ratio(&m, 0.9), None);

    // Non-square 6x10: centre (3, 5); squares up to side 5 (i < min(6, 10)/2 = 3). Mass 1 at
    // the centre and 1 two columns right of it: side 3 holds 1/2, side 5 all.
    let m = Tensor::zeros([6, 10], (Kind::Double, Device::Cpu));
    let _ = m.get(3).get(5).fill_(1.0);
    let _ = m.get(3).get(7).fill_(1.0);
    assert_eq!(area_ratio(&m, 0.4), ratio(3, 6, 10)); // 9/60
    assert_eq!(area_ratio(&m, 0.99), ratio(5, 6, 10)); // 25/60
                                                       // A map that sums to zero has no area.
    assert_eq!(
        area_ratio(&Tensor::zeros([6, 6], (Kind::Double, Device::Cpu)), 0.5),
        None
    );
}

#[test]
fn normalised_log_map_is_log10_scaled_to_one() {
    let s = Tensor::from_slice(&[0.0f64, 9.0, 99.0, 999.0]).view([2, 2]);
    let m = normalised_log_map(&s);
    let want = Tensor::from_slice(&[0.0f64, 1.0 / 3.0, 2.0 / 3.0, 1.0]).view([2, 2]);
    assert!(m.allclose(&want, 1e-15, 1e-15, false), "{m}");
    assert!(
        normalised_log_map(&Tensor::zeros([2, 2], (Kind::Double, Device::Cpu)))
            .equal(&Tensor::zeros([2, 2], (Kind::Double, Device::Cpu)))
    );
}

#[test]
fn a_vit_erf_has_the_input_shape_and_is_finite_and_non_negative() {
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/backbones/vit_quick.json"
    );
    let cfg = BackboneConfig::from_spec(spec).unwrap();
    // The weights are left trainable on purpose: only the input may get a gradient.
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Backbone::new(&vs.root(), &cfg).unwrap();
    let f = |x: &Tensor| backbone_feature_map(&model, x);
    // Square (4x4 patch grid) and non-square (4x6) inputs.
    for (hh, ww) in [(32i64, 32i64), (32, 48)] {
        let x = Tensor::randn([2, 3, hh, ww], (Kind::Float, Device::Cpu));
        assert_eq!(f(&x).size(), [2, 32, hh / 8, ww / 8]);
        let mut acc = ErfAccumulator::new(hh, ww);
        assert_eq!(acc.add(&f, &x).unwrap(), 2);
        let mean = acc.mean();
        assert_eq!(mean.size(), [hh, ww]);
        assert!(bool::try_from(mean.isfinite().all()).unwrap());
        assert!(mean.min().double_value(&[]) >= 0.0);
        assert!(mean.max().double_value(&[]) > 0.0, "some pixel contributes");
        let report = high_contribution_area_ratios(&mean);
        assert_eq!(report.len(), 4);
        for (t, r) in report {
            if let Some(r) = r {
                assert!(r.ratio > 0.0 && r.ratio <= 1.0, "t {t}: {r:?}");
            }
        }
    }
    // Nothing of the model got a gradient.
    for (name, t) in vs.variables() {
        assert!(!t.grad().defined(), "{name} got a gradient");
    }
}

#[test]
fn every_backbone_family_gives_a_feature_map_and_an_erf() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/backbones/");
    let tinyvit = r#"{"arch":"tinyvit","img_size":32,"embed_dims":[8,16,16,24],"depths":[1,1,1,1],"num_heads":[1,2,2,2],"window_sizes":[3,3,3,3],"mlp_ratio":2.0,"mbconv_expand_ratio":2.0,"neck_chans":16}"#;
    let configs = [
        BackboneConfig::from_spec(&format!("{root}resnet_quick.json")).unwrap(),
        BackboneConfig::from_spec(&format!("{root}samvit_quick.json")).unwrap(),
        BackboneConfig::from_json_str(tinyvit).unwrap(),
    ];
    for cfg in configs {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Backbone::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let f = |x: &Tensor| backbone_feature_map(&model, x);
        let map = tch::no_grad(|| f(&x));
        assert_eq!(map.dim(), 4, "{}: {:?}", model.arch(), map.size());
        assert_eq!(map.size()[0], 2);
        let mut acc = ErfAccumulator::new(32, 32);
        assert_eq!(acc.add(&f, &x).unwrap(), 2, "{}", model.arch());
        let mean = acc.mean();
        assert!(bool::try_from(mean.isfinite().all()).unwrap());
        assert!(mean.min().double_value(&[]) >= 0.0);
        assert!(mean.max().double_value(&[]) > 0.0, "{}", model.arch());
    }
}
