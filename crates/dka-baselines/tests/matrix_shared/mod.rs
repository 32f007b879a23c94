//! The models, the case table and the shared checks of `matrix.rs` and
//! `matrix_backbones.rs`.
use dka_baselines::vpt::{PromptKind, VptConfig};
use dka_baselines::{io, MethodConfig};
use dka_core::dka::{DkaConfig, Init};
use dka_core::{Backbone, BackboneConfig};
use std::collections::BTreeMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

// Small ViT: D = 32, depth 2, MLP hidden 64, patch 8, 32x32 input (4x4 grid + CLS).
pub const D: i64 = 32;
pub const DEPTH: i64 = 2;
pub const H: i64 = 64;
pub const VIT: &str = r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":2,"num_heads":2,"mlp_ratio":2.0,"num_classes":0}"#;
pub const RESNET: &str =
    r#"{"arch":"resnet","block":"basic","layers":[1,1],"channels":[8,16],"num_classes":0}"#;

pub struct Case {
    pub method: MethodConfig,
    /// Output equals the bare backbone before training.
    pub identity: bool,
    /// Trainable parameters on the small ViT (head excluded).
    pub params: i64,
}

pub fn vit_backbone_params() -> i64 {
    let block = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * H + H) + (H * D + D);
    let embed = 3 * 8 * 8 * D + D + D + (1 + 16) * D;
    DEPTH * block + embed + 2 * D
}

pub fn cases() -> Vec<Case> {
    let aim_h = D / 4;
    let dka = |init| DkaConfig {
        init,
        ..DkaConfig::authors()
    };
    vec![
        Case {
            method: MethodConfig::by_name("full").unwrap(),
            identity: true,
            params: vit_backbone_params(),
        },
        Case {
            method: MethodConfig::by_name("linear").unwrap(),
            identity: true,
            params: 0,
        },
        // Every bias: per block norm1, qkv, proj, norm2, fc1, fc2; plus patch embed and final norm.
        Case {
            method: MethodConfig::by_name("bitfit").unwrap(),
            identity: true,
            params: DEPTH * (D + 3 * D + D + D + H + D) + 2 * D,
        },
        // Deep prompts: depth x p x D.
        Case {
            method: MethodConfig::by_name("vpt").unwrap(),
            identity: false,
            params: DEPTH * 10 * D,
        },
        Case {
            method: MethodConfig::Vpt(dka_baselines::vpt::VptConfig {
                deep: false,
                ..Default::default()
            }),
            identity: false,
            params: 10 * D,
        },
        // q and v slices, r = 8: per block 2 x (A r x D + B D x r).
        Case {
            method: MethodConfig::by_name("lora").unwrap(),
            identity: true,
            params: DEPTH * 2 * (8 * D + D * 8),
        },
        // Whole qkv plus fc2, r = 4: A r x D + B 3D x r; A r x H + B D x r.
        Case {
            method: MethodConfig::Lora(dka_baselines::lora::LoraConfig {
                r: 4,
                targets: vec!["qkv".into(), "fc2".into()],
                qkv_parts: "qkv".into(),
                ..Default::default()
            }),
            identity: true,
            params: DEPTH * ((4 * D + 3 * D * 4) + (4 * H + D * 4)),
        },
        // Two bottlenecks per block, d = 64, with biases.
        Case {
            method: MethodConfig::by_name("adapter").unwrap(),
            identity: true,
            params: DEPTH * 2 * (D * 64 + 64 + 64 * D + D),
        },
        Case {
            method: MethodConfig::by_name("adaptformer").unwrap(),
            identity: true,
            params: DEPTH * (D * 8 + 8 + 8 * D + D),
        },
        // Two bypasses per block: down, 3x3 conv 8->8 with bias, up.
        Case {
            method: MethodConfig::by_name("convpass").unwrap(),
            identity: true,
            params: DEPTH * 2 * (D * 8 + 8 + 8 * 8 * 9 + 8 + 8 * D + D),
        },
        Case {
            method: MethodConfig::by_name("ciat").unwrap(),
            identity: true,
            params: DEPTH * 2 * (D * 8 + 8 + 8 * D + D),
        },
        Case {
            method: MethodConfig::by_name("aim").unwrap(),
            identity: true,
            params: DEPTH * 2 * (D * aim_h + aim_h + aim_h * D + D),
        },
        // One shared module per block (mona): Down, Up (no bias), 51x51 and 5x5 depthwise.
        Case {
            method: MethodConfig::Dka(dka(Init::Authors)),
            identity: false,
            params: DEPTH * (2 * D * 16 + 16 * (51 * 51 + 5 * 5)),
        },
        Case {
            method: MethodConfig::Dka(dka(Init::ZeroUp)),
            identity: true,
            params: DEPTH * (2 * D * 16 + 16 * (51 * 51 + 5 * 5)),
        },
    ]
}

/// A backbone, the method's store, and a 3-class head on pooled features.
pub struct Model {
    pub backbone_vs: nn::VarStore,
    pub adapter_vs: nn::VarStore,
    pub head_vs: nn::VarStore,
    pub backbone: Backbone,
    pub head: nn::Linear,
}

/// libtorch's RNG is process-wide and tests run on parallel threads: seed and build under a lock.
pub static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn build(cfg: &BackboneConfig, method: &MethodConfig, seed: i64) -> dka_core::Result<Model> {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let mut backbone_vs = nn::VarStore::new(Device::Cpu);
    let mut backbone = Backbone::new(&backbone_vs.root(), cfg)?;
    let head_vs = nn::VarStore::new(Device::Cpu);
    let head = nn::linear(
        head_vs.root() / "head",
        backbone.num_features(),
        3,
        Default::default(),
    );
    let adapter_vs = nn::VarStore::new(Device::Cpu);
    method.method().attach(&mut backbone, &adapter_vs.root())?;
    backbone_vs.freeze();
    for (name, mut t) in backbone_vs.variables() {
        if method.method().trains_backbone(&name) && !name.contains("running_") {
            let _ = t.requires_grad_(true);
        }
    }
    Ok(Model {
        backbone_vs,
        adapter_vs,
        head_vs,
        backbone,
        head,
    })
}

pub fn logits(m: &Model, x: &Tensor, train: bool) -> Tensor {
    let f = m.backbone.forward_features(x, train);
    m.head.forward(&m.backbone.pool(&f))
}

pub fn trainable(m: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = m.adapter_vs.variables().into_iter().collect();
    v.extend(
        m.backbone_vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (format!("backbone.{n}"), t)),
    );
    v
}

pub fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect()
}

pub fn input() -> Tensor {
    (Tensor::arange(4 * 3 * 32 * 32, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([4, 3, 32, 32])
}

/// The shared checks of one case on one backbone, on [`input`] (4 images of 32x32).
pub fn shared_checks(cfg: &BackboneConfig, case: &Case) {
    let x = input();
    let y = Tensor::from_slice(&[0i64, 1, 2, 1]);
    {
        let cfg = cfg.clone();
        let name = format!("{} {:?}", cfg_arch(&cfg), case.method)
            .chars()
            .take(80)
            .collect::<String>();
        let m = build(&cfg, &case.method, 1).unwrap();

        // Identity at init.
        let bare = build(&cfg, &MethodConfig::by_name("linear").unwrap(), 1).unwrap();
        let same = tch::no_grad(|| logits(&m, &x, false).equal(&logits(&bare, &x, false)));
        assert_eq!(same, case.identity, "{name}: identity at init");

        // Parameter count.
        let n: i64 = trainable(&m).iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(n, case.params, "{name}: trainable parameters");

        // One optimiser step changes only the method's tensors.
        let frozen_before = snapshot(&m.backbone_vs);
        let train_before: BTreeMap<String, Tensor> = trainable(&m)
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let mut params: Vec<Tensor> = trainable(&m).into_iter().map(|(_, t)| t).collect();
        params.extend(m.head_vs.trainable_variables());
        // Dropout in a training forward draws from libtorch's process-wide generator: under
        // the lock, or it could land between another test thread's seed and its init.
        let loss = {
            let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
            logits(&m, &x, true).cross_entropy_for_logits(&y)
        };
        for p in params.iter_mut() {
            p.zero_grad();
        }
        loss.backward();
        // A sign-SGD step: every tensor with any gradient moves.
        tch::no_grad(|| {
            for p in params.iter_mut() {
                let g = p.grad();
                if g.defined() {
                    let _ = p.f_sub_(&(g.sign() * 1e-2)).unwrap();
                }
            }
        });
        for (k, before) in &frozen_before {
            let now = &m.backbone_vs.variables()[k];
            if !now.requires_grad() {
                assert!(now.equal(before), "{name}: frozen {k} changed");
                assert!(!now.grad().defined(), "{name}: frozen {k} got a gradient");
            }
        }
        let changed = trainable(&m)
            .iter()
            .filter(|(k, t)| !t.equal(&train_before[k]))
            .count();
        assert!(
            case.params == 0 || changed > 0,
            "{name}: no trainable tensor changed"
        );

        // Save → load into a fresh model (other random adapter init) → same outputs.
        let dir = tempfile::tempdir().unwrap();
        let head: Vec<(String, Tensor)> = m.head_vs.variables().into_iter().collect();
        io::save(
            dir.path(),
            &case.method,
            &m.adapter_vs,
            &m.backbone_vs,
            &head,
        )
        .unwrap();
        let saved = io::open(dir.path()).unwrap();
        assert_eq!(saved.method, case.method);
        // The fresh model has other random adapters and head; its backbone gets the same
        // pretrained weights (for full fine-tuning the saved backbone then replaces them).
        let mut fresh = build(&cfg, &saved.method, 2).unwrap();
        tch::no_grad(|| {
            for (n, mut t) in fresh.backbone_vs.variables() {
                t.copy_(&frozen_before[&n]);
            }
        });
        let head_names: Vec<&str> = head.iter().map(|(n, _)| n.as_str()).collect();
        io::apply(
            &saved,
            dir.path(),
            &mut fresh.adapter_vs,
            &mut fresh.backbone_vs,
            &head_names,
        )
        .unwrap();
        tch::no_grad(|| {
            for (n, mut t) in fresh.head_vs.variables() {
                t.copy_(&saved.tensors[&n]);
            }
        });
        let a = tch::no_grad(|| logits(&m, &x, false));
        let b = tch::no_grad(|| logits(&fresh, &x, false));
        assert!(
            a.allclose(&b, 1e-6, 1e-6, false),
            "{name}: outputs differ after save/load"
        );
    }
}

/// Prompt tokens cannot attach to `cfg`: building them fails with a message containing `why`.
pub fn prompt_tokens_are_refused(cfg: &BackboneConfig, why: &str) {
    let tokens = MethodConfig::Vpt(VptConfig {
        kind: PromptKind::Tokens,
        ..Default::default()
    });
    let err = build(cfg, &tokens, 1)
        .err()
        .expect("prompt tokens are refused");
    assert!(err.to_string().contains(why), "{err}");
}

pub fn cfg_arch(cfg: &BackboneConfig) -> &'static str {
    match cfg {
        BackboneConfig::Vit(_) => "vit",
        BackboneConfig::ResNet(_) => "resnet",
        BackboneConfig::SamVit(_) => "samvit",
        BackboneConfig::TinyVit(_) => "tinyvit",
    }
}

/// Padding prompt parameters for C = 3 and a 32x32 input: frame round(30·32/224) = 4.
pub const PAD_PARAMS: i64 = 2 * 3 * 4 * 32 + 2 * 3 * (32 - 2 * 4) * 4;

pub fn padding(image_size: Option<i64>) -> MethodConfig {
    MethodConfig::Vpt(VptConfig {
        kind: PromptKind::Padding,
        image_size,
        ..Default::default()
    })
}
