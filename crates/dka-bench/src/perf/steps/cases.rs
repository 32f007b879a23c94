//! The cases of `dka bench steps`: which training steps are compared and with which
//! implementations (the PyTorch-eager reference, this project, this project with activation
//! checkpointing), with the trainer's default optimiser settings.
use crate::perf::steps::worker::{Case, CaseKind, StackShape};
use dka_baselines::MethodConfig;
use dka_core::dka::DkaConfig;
use dka_core::BackboneConfig;
use serde_json::Value;

/// One implementation of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Reference,
    Ours { checkpoint: bool },
}

impl Impl {
    pub fn label(self) -> &'static str {
        match self {
            Impl::Reference => "pytorch",
            Impl::Ours { checkpoint: false } => "dka",
            Impl::Ours { checkpoint: true } => "dka+ckpt",
        }
    }
}

/// A case and the implementations it compares (the reference first).
pub struct CaseSpec {
    pub case: Case,
    pub impls: Vec<Impl>,
}

fn vit_base(img: i64) -> BackboneConfig {
    let mut c = dka_core::vit::VitConfig::preset("vit_base_patch16_224").expect("preset");
    c.img_size = dka_core::vit::ImgSize::Square(img);
    c.num_classes = 0;
    BackboneConfig::Vit(c)
}

fn dka(d_hat: i64) -> MethodConfig {
    MethodConfig::Dka(DkaConfig {
        d_hat,
        dropout: 0.0,
        ..DkaConfig::authors()
    })
}

/// The cases: ViT-B/16 at 224 (batch 8) under linear probing, LoRA, Adapter (d 64 and, DKA's
/// width, 192), DKA d̂ 16 and 192; a DKA segmentation step at a 32x32 token grid (512 input); the DKA layer stack alone at
/// 32x32 and 64x64 (MedSAM's 1024 input); ResNet-50 with DKA after every bottleneck. `quick`:
/// the same with tiny models.
pub fn cases(quick: bool) -> Vec<CaseSpec> {
    let o = OptimDefaults::get();
    let plain = vec![Impl::Reference, Impl::Ours { checkpoint: false }];
    let with_ckpt = vec![
        Impl::Reference,
        Impl::Ours { checkpoint: false },
        Impl::Ours { checkpoint: true },
    ];
    let mk = |name: &str,
              kind: CaseKind,
              backbone: Option<BackboneConfig>,
              timm: Option<&str>,
              timm_kwargs: Value,
              method: MethodConfig,
              batch: i64,
              img: i64,
              classes: i64,
              stack: Option<StackShape>| Case {
        name: name.to_string(),
        kind,
        backbone,
        timm: timm.map(str::to_string),
        timm_kwargs,
        method,
        batch,
        img,
        classes,
        stack,
        head_lr: o.0,
        adapter_lr: o.1,
        clip_grad_norm: o.2,
    };
    let null = Value::Object(Default::default());
    if quick {
        let vit = BackboneConfig::from_json_str(
            r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":2,"num_heads":2,"num_classes":0}"#,
        )
        .expect("valid");
        let kw = serde_json::json!({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2});
        let resnet = BackboneConfig::from_json_str(
            r#"{"arch":"resnet","block":"bottleneck","layers":[1,1,1,1],"num_classes":0}"#,
        )
        .expect("valid");
        let t = Some("vit_base_patch16_224");
        let cls = |name: &str, m: MethodConfig| CaseSpec {
            case: mk(
                name,
                CaseKind::Classify,
                Some(vit.clone()),
                t,
                kw.clone(),
                m,
                2,
                32,
                3,
                None,
            ),
            impls: plain.clone(),
        };
        return vec![
            cls(
                "tiny linear",
                MethodConfig::by_name("linear").expect("known"),
            ),
            cls("tiny lora", MethodConfig::by_name("lora").expect("known")),
            cls(
                "tiny adapter",
                MethodConfig::by_name("adapter").expect("known"),
            ),
            cls("tiny dka d4", dka(4)),
            CaseSpec {
                case: mk(
                    "tiny seg dka d4",
                    CaseKind::Segment,
                    Some(vit.clone()),
                    t,
                    kw.clone(),
                    dka(4),
                    2,
                    32,
                    2,
                    None,
                ),
                impls: with_ckpt.clone(),
            },
            CaseSpec {
                case: mk(
                    "tiny dka stack 6x6",
                    CaseKind::Stack,
                    None,
                    None,
                    null.clone(),
                    dka(4),
                    2,
                    0,
                    0,
                    Some(StackShape {
                        dim: 16,
                        h: 6,
                        w: 6,
                        layers: 2,
                    }),
                ),
                impls: with_ckpt.clone(),
            },
            CaseSpec {
                case: mk(
                    "tiny resnet dka d4",
                    CaseKind::Classify,
                    Some(resnet),
                    Some("resnet50"),
                    serde_json::json!({"layers": [1, 1, 1, 1]}),
                    dka(4),
                    2,
                    64,
                    3,
                    None,
                ),
                impls: plain.clone(),
            },
        ];
    }
    let vit = "vit_base_patch16_224";
    let cls = |name: &str, m: MethodConfig| CaseSpec {
        case: mk(
            name,
            CaseKind::Classify,
            Some(vit_base(224)),
            Some(vit),
            null.clone(),
            m,
            8,
            224,
            3,
            None,
        ),
        impls: plain.clone(),
    };
    let stack = |h: i64, batch: i64, impls: Vec<Impl>| CaseSpec {
        case: mk(
            &format!("dka stack d192 {h}x{h} b{batch}"),
            CaseKind::Stack,
            None,
            None,
            null.clone(),
            dka(192),
            batch,
            0,
            0,
            Some(StackShape {
                dim: 768,
                h,
                w: h,
                layers: 12,
            }),
        ),
        impls,
    };
    vec![
        cls(
            "vit-b16 224 b8 linear",
            MethodConfig::by_name("linear").expect("known"),
        ),
        cls(
            "vit-b16 224 b8 lora r8",
            MethodConfig::by_name("lora").expect("known"),
        ),
        cls(
            "vit-b16 224 b8 adapter d64",
            MethodConfig::by_name("adapter").expect("known"),
        ),
        // The Adapter at DKA's segmentation width: the same two Down/GELU/Up per block as DKA
        // d̂ 192 without the convolutions, so the DKA d̂ 192 / Adapter d192 ratio is what the
        // convolutions themselves cost.
        cls(
            "vit-b16 224 b8 adapter d192",
            MethodConfig::Adapter(dka_baselines::adapter::AdapterConfig {
                dim: 192,
                ..Default::default()
            }),
        ),
        cls("vit-b16 224 b8 dka d16", dka(16)),
        cls("vit-b16 224 b8 dka d192", dka(192)),
        CaseSpec {
            case: mk(
                "vit-b16 512 b2 seg dka d192",
                CaseKind::Segment,
                Some(vit_base(512)),
                Some(vit),
                serde_json::json!({"img_size": 512}),
                dka(192),
                2,
                512,
                2,
                None,
            ),
            impls: with_ckpt.clone(),
        },
        stack(32, 2, with_ckpt.clone()),
        stack(64, 1, with_ckpt.clone()),
        CaseSpec {
            case: mk(
                "resnet50 224 b8 dka d16",
                CaseKind::Classify,
                BackboneConfig::preset("resnet50").map(|mut c| {
                    c.set_num_classes(0);
                    c
                }),
                Some("resnet50"),
                null.clone(),
                dka(16),
                8,
                224,
                3,
                None,
            ),
            impls: plain,
        },
    ]
}

/// The trainer's default optimiser settings (the authors' script): head lr, adapter lr, clip.
struct OptimDefaults(f64, f64, Option<f64>);

impl OptimDefaults {
    fn get() -> Self {
        let o = crate::config::run::OptimConfig::default();
        Self(o.head_lr, o.adapter_lr, o.clip_grad_norm)
    }
}
