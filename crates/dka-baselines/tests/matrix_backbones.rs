//! The shared method checks of `matrix.rs` (identity at init, only the method's tensors
//! change, save → load, parameter formula) on the other backbone families: LoRA on convs and
//! prompt padding on a ResNet, prompt tokens in a SAM encoder's global blocks, token methods and
//! prompt padding on TinyViT, and LoRA's q/v slices in TinyViT's per-head qkv rows.
use dka_baselines::lora::{ConvTarget, LoraConfig};
use dka_baselines::vpt::VptConfig;
use dka_baselines::MethodConfig;
use dka_core::dka::{DkaConfig, Init};
use dka_core::sites::QkvLayout;
use dka_core::BackboneConfig;
use tch::{Device, Kind, Tensor};

#[allow(dead_code)]
mod matrix_shared;
use matrix_shared::*;

/// Small bottleneck ResNet: layer1.0 (64 -> planes 4 -> 16), layer2.0 (16 -> 8 -> 32, stride 2).
const RESNET_BOTTLENECK: &str =
    r#"{"arch":"resnet","block":"bottleneck","layers":[1,1],"channels":[4,8],"num_classes":0}"#;

#[test]
fn lora_on_convs_and_prompt_padding_pass_the_shared_checks_on_a_resnet() {
    let cfg = BackboneConfig::from_json_str(RESNET_BOTTLENECK).unwrap();
    let cases = vec![
        // peft's Conv2d LoRA on conv2 (3x3), r = 8: A [r, c, 3, 3], B [c, r, 1, 1] per block.
        Case {
            method: MethodConfig::by_name("lora").unwrap(),
            identity: true,
            params: (8 * 4 * 9 + 4 * 8) + (8 * 8 * 9 + 8 * 8),
        },
        // conv1 and conv3 (1x1) of stage 1 only, r = 2.
        Case {
            method: MethodConfig::Lora(LoraConfig {
                r: 2,
                conv_targets: vec![ConvTarget::Conv1, ConvTarget::Conv3],
                layers: Some(vec![1]),
                ..Default::default()
            }),
            identity: true,
            params: (2 * 16 + 8 * 2) + (2 * 8 + 32 * 2),
        },
        // `auto` is padding on a CNN (built for the 32x32 input); N(0, 1) frame: not identity.
        Case {
            method: MethodConfig::Vpt(VptConfig {
                image_size: Some(32),
                ..Default::default()
            }),
            identity: false,
            params: PAD_PARAMS,
        },
    ];
    for case in cases {
        shared_checks(&cfg, &case);
    }
    prompt_tokens_are_refused(&cfg, "padding");
}

// SAM encoder: D = 16, depth 3 (block 1 and 2 global, block 0 windowed), MLP 4D, 4x4 grid.
const SAM: &str = r#"{"arch":"samvit","img_size":32,"patch_size":8,"embed_dim":16,"depth":3,"num_heads":2,"window_size":2,"global_attn_indexes":[1,2],"neck_chans":8}"#;

#[test]
fn prompts_in_global_blocks_and_token_methods_pass_the_shared_checks_on_a_sam_encoder() {
    let cfg = BackboneConfig::from_json_str(SAM).unwrap();
    let d = 16;
    let cases = vec![
        // Deep: one set of 10 prompts per global block (2 of them).
        Case {
            method: MethodConfig::by_name("vpt").unwrap(),
            identity: false,
            params: 2 * 10 * d,
        },
        Case {
            method: MethodConfig::Vpt(VptConfig {
                deep: false,
                ..Default::default()
            }),
            identity: false,
            params: 10 * d,
        },
        Case {
            method: padding(None),
            identity: false,
            params: PAD_PARAMS,
        },
        Case {
            method: MethodConfig::by_name("lora").unwrap(),
            identity: true,
            params: 3 * 2 * (8 * d + d * 8),
        },
        Case {
            method: MethodConfig::Dka(DkaConfig {
                init: Init::ZeroUp,
                ..DkaConfig::authors()
            }),
            identity: true,
            params: 3 * (2 * d * 16 + 16 * (51 * 51 + 5 * 5)),
        },
    ];
    for case in cases {
        shared_checks(&cfg, &case);
    }
}

// TinyViT: MBConv stage (8 channels at 32x32), then one TinyViT block per stage: widths 16,
// 16, 24 on 16x16, 8x8, 8x8 grids with 3x3 windows (padded), neck to 16 channels.
const TINYVIT: &str = r#"{"arch":"tinyvit","img_size":32,"embed_dims":[8,16,16,24],"depths":[1,1,1,1],"num_heads":[1,2,2,2],"window_sizes":[3,3,3,3],"mlp_ratio":2.0,"mbconv_expand_ratio":2.0,"neck_chans":16}"#;

#[test]
fn token_methods_and_prompt_padding_pass_the_shared_checks_on_a_tinyvit() {
    let cfg = BackboneConfig::from_json_str(TINYVIT).unwrap();
    let widths = [16i64, 16, 24];
    let per_block = |f: &dyn Fn(i64) -> i64| widths.iter().map(|&d| f(d)).sum::<i64>();
    let cases = vec![
        // q and v slices of the per-head qkv, r = 8.
        Case {
            method: MethodConfig::by_name("lora").unwrap(),
            identity: true,
            params: per_block(&|d| 2 * (8 * d + d * 8)),
        },
        Case {
            method: MethodConfig::by_name("adapter").unwrap(),
            identity: true,
            params: per_block(&|d| 2 * (d * 64 + 64 + 64 * d + d)),
        },
        Case {
            method: MethodConfig::by_name("convpass").unwrap(),
            identity: true,
            params: per_block(&|d| 2 * (d * 8 + 8 + 8 * 8 * 9 + 8 + 8 * d + d)),
        },
        Case {
            method: MethodConfig::Dka(DkaConfig {
                init: Init::ZeroUp,
                ..DkaConfig::authors()
            }),
            identity: true,
            params: per_block(&|d| 2 * d * 16 + 16 * (51 * 51 + 5 * 5)),
        },
        // `auto` is padding on TinyViT, at its img_size.
        Case {
            method: MethodConfig::by_name("vpt").unwrap(),
            identity: false,
            params: PAD_PARAMS,
        },
    ];
    for case in cases {
        shared_checks(&cfg, &case);
    }
    prompt_tokens_are_refused(&cfg, "windowed");
}

/// LoRA's q / v slices land on TinyViT's per-head q / v rows: a `v`-only LoRA changes no q or
/// k output of any head.
#[test]
fn lora_slices_follow_tinyvits_per_head_qkv_rows() {
    let cfg = BackboneConfig::from_json_str(TINYVIT).unwrap();
    let method = MethodConfig::Lora(LoraConfig {
        qkv_parts: "v".into(),
        ..Default::default()
    });
    let mut m = build(&cfg, &method, 1).unwrap();
    // Random draws from libtorch's process-wide generator, under the lock (see `build`).
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::no_grad(|| {
        for (_, mut t) in m.adapter_vs.variables() {
            t.copy_(&t.randn_like());
        }
    });
    let info = m.backbone.token_blocks();
    let (dim, sites) = m.backbone.token_blocks_mut().into_iter().next().unwrap();
    assert_eq!(info[0].qkv, QkvLayout::PerHead { heads: 2 });
    let x = Tensor::randn([3, 5, dim], (Kind::Float, Device::Cpu));
    drop(guard);
    let delta = tch::no_grad(|| sites.qkv.as_ref().unwrap().delta(&x, false));
    // [tokens, heads, (q, k, v), head_dim]
    let per_head = delta.view([3, 5, 2, 3, dim / 2]);
    let qk = per_head.narrow(3, 0, 2).abs().max().double_value(&[]);
    let v = per_head.narrow(3, 2, 1).abs().max().double_value(&[]);
    assert_eq!(qk, 0.0);
    assert!(v > 0.0);
}
