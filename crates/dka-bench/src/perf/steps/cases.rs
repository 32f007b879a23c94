//! The cases of `dka bench steps`: which training steps are compared and with which
//! implementations (the PyTorch-eager reference, this project, this project with activation
//! checkpointing), with the trainer's default optimiser settings.
use crate::perf::steps::protocol::{Case, CaseKind, StackShape};
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

/// What a case runs besides its method: the kind of step, the backbone (ours and timm's name
/// and constructor arguments for the reference), batch, input size, classes, or the stack.
#[derive(Clone)]
struct Shape {
    kind: CaseKind,
    backbone: Option<BackboneConfig>,
    timm: Option<&'static str>,
    timm_kwargs: Value,
    batch: i64,
    img: i64,
    classes: i64,
    stack: Option<StackShape>,
}

impl Shape {
    fn model(kind: CaseKind, backbone: BackboneConfig, timm: &'static str, kw: Value) -> Self {
        Self {
            kind,
            backbone: Some(backbone),
            timm: Some(timm),
            timm_kwargs: kw,
            batch: 8,
            img: 224,
            classes: if kind == CaseKind::Segment { 2 } else { 3 },
            stack: None,
        }
    }

    /// DKA's layer stack alone on a `dim`-wide `h x h` grid.
    fn stack(dim: i64, h: i64, layers: usize, batch: i64) -> Self {
        Self {
            kind: CaseKind::Stack,
            backbone: None,
            timm: None,
            timm_kwargs: Value::Object(Default::default()),
            batch,
            img: 0,
            classes: 0,
            stack: Some(StackShape {
                dim,
                h,
                w: h,
                layers,
            }),
        }
    }

    fn at(mut self, batch: i64, img: i64) -> Self {
        (self.batch, self.img) = (batch, img);
        self
    }

    /// The case `name`: this shape under `method`, compared across `impls`, with the trainer's
    /// default optimiser settings (the authors' script).
    fn case(&self, name: &str, method: MethodConfig, impls: &[Impl]) -> CaseSpec {
        let o = crate::config::run::OptimConfig::default();
        let s = self.clone();
        CaseSpec {
            case: Case {
                name: name.to_string(),
                kind: s.kind,
                backbone: s.backbone,
                timm: s.timm.map(str::to_string),
                timm_kwargs: s.timm_kwargs,
                method,
                batch: s.batch,
                img: s.img,
                classes: s.classes,
                stack: s.stack,
                head_lr: o.head_lr,
                adapter_lr: o.adapter_lr,
                clip_grad_norm: o.clip_grad_norm,
                precision: crate::config::run::Precision::Fp32,
            },
            impls: impls.to_vec(),
        }
    }
}

const PLAIN: [Impl; 2] = [Impl::Reference, Impl::Ours { checkpoint: false }];
const WITH_CKPT: [Impl; 3] = [
    Impl::Reference,
    Impl::Ours { checkpoint: false },
    Impl::Ours { checkpoint: true },
];

fn by_name(name: &str) -> MethodConfig {
    MethodConfig::by_name(name).expect("a known method")
}

/// The cases: ViT-B/16 at 224 (batch 8) under linear probing, LoRA, Adapter (d 64 and, DKA's
/// width, 192), DKA d̂ 16 and 192; a DKA segmentation step at a 32x32 token grid (512 input);
/// the DKA layer stack alone at 32x32 and 64x64 (MedSAM's 1024 input); ResNet-50 with DKA
/// after every bottleneck. `quick`: the same with tiny models.
pub fn cases(quick: bool) -> Vec<CaseSpec> {
    if quick {
        quick_cases()
    } else {
        paper_cases()
    }
}

fn paper_cases() -> Vec<CaseSpec> {
    let null = Value::Object(Default::default());
    let vit = Shape::model(
        CaseKind::Classify,
        vit_base(224),
        "vit_base_patch16_224",
        null.clone(),
    );
    let seg = Shape::model(
        CaseKind::Segment,
        vit_base(512),
        "vit_base_patch16_224",
        serde_json::json!({"img_size": 512}),
    )
    .at(2, 512);
    let mut resnet50 = BackboneConfig::preset("resnet50").expect("a preset");
    resnet50.set_num_classes(0);
    let resnet = Shape::model(CaseKind::Classify, resnet50, "resnet50", null);
    // The Adapter at DKA's segmentation width: the same two Down/GELU/Up per block as DKA
    // d̂ 192 without the convolutions, so the DKA d̂ 192 / Adapter d192 ratio is what the
    // convolutions themselves cost.
    let adapter192 = MethodConfig::Adapter(dka_baselines::adapter::AdapterConfig {
        dim: 192,
        ..Default::default()
    });
    vec![
        vit.case("vit-b16 224 b8 linear", by_name("linear"), &PLAIN),
        vit.case("vit-b16 224 b8 lora r8", by_name("lora"), &PLAIN),
        vit.case("vit-b16 224 b8 adapter d64", by_name("adapter"), &PLAIN),
        vit.case("vit-b16 224 b8 adapter d192", adapter192, &PLAIN),
        vit.case("vit-b16 224 b8 dka d16", dka(16), &PLAIN),
        vit.case("vit-b16 224 b8 dka d192", dka(192), &PLAIN),
        seg.case("vit-b16 512 b2 seg dka d192", dka(192), &WITH_CKPT),
        Shape::stack(768, 32, 12, 2).case("dka stack d192 32x32 b2", dka(192), &WITH_CKPT),
        Shape::stack(768, 64, 12, 1).case("dka stack d192 64x64 b1", dka(192), &WITH_CKPT),
        resnet.case("resnet50 224 b8 dka d16", dka(16), &PLAIN),
    ]
}

/// The same kinds of case with tiny models (seconds; for checking the bench itself).
fn quick_cases() -> Vec<CaseSpec> {
    let vit = BackboneConfig::from_json_str(
        r#"{"arch":"vit","img_size":32,"patch_size":8,"embed_dim":32,"depth":2,"num_heads":2,"num_classes":0}"#,
    )
    .expect("valid");
    let kw = serde_json::json!({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2});
    let resnet = BackboneConfig::from_json_str(
        r#"{"arch":"resnet","block":"bottleneck","layers":[1,1,1,1],"num_classes":0}"#,
    )
    .expect("valid");
    let t = "vit_base_patch16_224";
    let cls = Shape::model(CaseKind::Classify, vit.clone(), t, kw.clone()).at(2, 32);
    let seg = Shape::model(CaseKind::Segment, vit, t, kw).at(2, 32);
    let res = Shape::model(
        CaseKind::Classify,
        resnet,
        "resnet50",
        serde_json::json!({"layers": [1, 1, 1, 1]}),
    )
    .at(2, 64);
    vec![
        cls.case("tiny linear", by_name("linear"), &PLAIN),
        cls.case("tiny lora", by_name("lora"), &PLAIN),
        cls.case("tiny adapter", by_name("adapter"), &PLAIN),
        cls.case("tiny dka d4", dka(4), &PLAIN),
        seg.case("tiny seg dka d4", dka(4), &WITH_CKPT),
        Shape::stack(16, 6, 2, 2).case("tiny dka stack 6x6", dka(4), &WITH_CKPT),
        res.case("tiny resnet dka d4", dka(4), &PLAIN),
    ]
}
