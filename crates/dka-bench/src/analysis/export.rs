//! `dka export`: a trained run in the formats PyTorch code already reads.
//!
//! - `torch`: every method. `model.safetensors` (the method's tensors under dka's names,
//!   trained backbone tensors under `backbone.<timm name>`, the head under `task_head.*`),
//!   `dka_export.json` (the backbone's timm config, the method, what every block's sites hold,
//!   the head, the classes, the input convention) and, when the backbone is part of the export,
//!   `backbone.safetensors` (timm names). `python/dka_torch.py`'s `load(DIR)` rebuilds the
//!   model on timm. ViT backbones.
//! - `peft`: a LoRA run on a ViT classifier, as peft's `adapter_config.json` +
//!   `adapter_model.safetensors`, the head in `modules_to_save` (`PeftModel.from_pretrained`
//!   on timm's model with `num_classes` set).
//! - `merged`: methods that fold into the backbone (LoRA, BitFit, full fine-tuning, linear
//!   probing) on a ViT classifier: one `model.safetensors` that timm loads strictly, head
//!   included, and a `config.json` with timm's `pretrained_cfg`.
//!
//! Every export writes `check.safetensors` (a normalised input batch and dka's logits for it,
//! to verify a loader against) and a model card, `README.md`.
use crate::train::trained::TrainedRun;
use crate::util::fs::{write_atomic, write_safetensors};
use anyhow::{bail, Context};
use dka_baselines::MethodConfig;
use dka_core::Backbone;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The formats of `dka export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Torch,
    Peft,
    Merged,
}

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub run: PathBuf,
    pub format: Format,
    pub out: PathBuf,
    /// Write the backbone's weights into the export even when they come from a weights file
    /// (always done for a random-init backbone and for full fine-tuning).
    pub with_backbone: bool,
    /// The backbone weights file, when it has moved since the run.
    pub weights: Option<PathBuf>,
}

/// What an export wrote.
pub struct Exported {
    pub files: Vec<PathBuf>,
    /// Whether the backbone's weights are in the export.
    pub backbone_included: bool,
}

/// Exports the run (see the module docs).
pub fn export(o: &ExportOptions) -> anyhow::Result<Exported> {
    let run = TrainedRun::open(&o.run, Device::Cpu, o.weights.as_deref())?;
    let Backbone::Vit(_) = &run.model.backbone else {
        bail!(
            "{}: dka export covers ViT backbones (timm's VisionTransformer) so far, not {}; the \
             run's adapter folder ({}) loads in dka",
            o.run.display(),
            run.model.backbone.arch(),
            o.run.join("adapter").display()
        );
    };
    std::fs::create_dir_all(&o.out).with_context(|| o.out.display().to_string())?;
    let method = &run.cfg.method;
    let backbone_included = o.with_backbone
        || run.cfg.weights_file().is_none()
        || matches!(method, MethodConfig::Full(_));
    let mut files = match o.format {
        Format::Torch => torch(&run, &o.out, backbone_included)?,
        Format::Peft => peft(&run, &o.out, backbone_included)?,
        Format::Merged => merged(&run, &o.out)?,
    };
    if o.format != Format::Torch {
        // What the run was, for a loader that needs the backbone's config or the classes.
        let bcfg = dka_core::BackboneConfig::from_spec(&run.cfg.backbone)?;
        let meta = json!({
            "format": o.format,
            "version": 1,
            "dka": env!("CARGO_PKG_VERSION"),
            "backbone": { "config": bcfg },
            "method": run.cfg.method,
            "classes": run.classes(),
            "input": input_json(&run)?,
            "backbone_included": backbone_included || o.format == Format::Merged,
        });
        files.push(write_json(&o.out.join("dka_export.json"), &meta)?);
    }
    files.push(check(&run, &o.out)?);
    files.push(model_card(
        &run,
        o,
        backbone_included && o.format != Format::Merged,
    )?);
    Ok(Exported {
        files,
        backbone_included: backbone_included || o.format == Format::Merged,
    })
}

fn named(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_named(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<PathBuf> {
    let refs: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.shallow_clone()))
        .collect();
    write_safetensors(path, &refs)?;
    Ok(path.to_path_buf())
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<PathBuf> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(path.to_path_buf())
}

/// The input convention, as the export's readers need it.
fn input_json(run: &TrainedRun) -> anyhow::Result<Value> {
    let spec = run.cfg.input_spec()?;
    Ok(json!({
        "size": run.cfg.img_size, "mean": spec.mean, "std": spec.std, "scale": spec.scale,
        "resize": spec.resize, "interpolation": spec.interpolation, "source": spec.source,
    }))
}

/// The head: `linear` (classification on the pooled features, or Segmenter's per-patch linear
/// decoder upsampled to the input) or Segmenter's `mask-transformer`.
fn head_json(run: &TrainedRun) -> Value {
    let mask = matches!(run.model.head, crate::train::model::Head::Mask(_));
    let width = run.model.backbone.num_features();
    json!({
        "kind": if mask { "mask-transformer" } else { "linear" },
        "segmentation": run.segmentation(),
        "classes": run.classes().len(),
        "in_features": width,
        "d_model": run.cfg.decoder_dim.unwrap_or(width),
        "layers": 2,
    })
}

/// `--format torch`.
fn torch(run: &TrainedRun, out: &Path, backbone_included: bool) -> anyhow::Result<Vec<PathBuf>> {
    let m = &run.model;
    let method = run.cfg.method.method();
    let mut tensors = named(&m.adapter_vs);
    tensors.extend(
        named(&m.backbone_vs)
            .into_iter()
            .filter(|(n, _)| method.trains_backbone(n))
            .map(|(n, t)| (format!("{}{n}", dka_baselines::io::BACKBONE_PREFIX), t)),
    );
    tensors.extend(named(&m.head_vs));
    let mut files = vec![write_named(&out.join("model.safetensors"), &tensors)?];
    if backbone_included {
        files.push(write_named(
            &out.join("backbone.safetensors"),
            &named(&m.backbone_vs),
        )?);
    }
    let bcfg = dka_core::BackboneConfig::from_spec(&run.cfg.backbone)?;
    let weights = run.cfg.weights_file().map(|w| {
        json!({
            "file": w.file_name().map(|f| f.to_string_lossy().to_string()),
            "sha256": dka_data::files::sha256_file(w).ok(),
        })
    });
    let meta = json!({
        "format": "dka-torch",
        "version": 1,
        "dka": env!("CARGO_PKG_VERSION"),
        "backbone": { "config": bcfg },
        "method": run.cfg.method,
        "sites": m.backbone.export_sites()?,
        "head": head_json(run),
        "classes": run.classes(),
        "input": input_json(run)?,
        "backbone_included": backbone_included,
        "backbone_weights": weights,
    });
    files.push(write_json(&out.join("dka_export.json"), &meta)?);
    Ok(files)
}

/// The classifier head under timm's names (`head.weight`, `head.bias`); refuses a
/// segmentation run (timm's ViT has no dense head).
fn timm_head(run: &TrainedRun, format: &str) -> anyhow::Result<Vec<(String, Tensor)>> {
    if run.segmentation() {
        bail!(
            "{}: --format {format} is for classifiers (timm's ViT has no segmentation head); use \
             --format torch",
            run.dir.display()
        );
    }
    Ok(named(&run.model.head_vs)
        .into_iter()
        .map(|(n, t)| (n.replace("task_head.", "head."), t))
        .collect())
}

/// `--format peft`.
fn peft(run: &TrainedRun, out: &Path, backbone_included: bool) -> anyhow::Result<Vec<PathBuf>> {
    let MethodConfig::Lora(cfg) = &run.cfg.method else {
        bail!(
            "{}: --format peft is for LoRA runs (this is {}); use --format torch",
            run.dir.display(),
            run.cfg.method.method().name()
        );
    };
    let head = timm_head(run, "peft")?;
    let m = &run.model;
    dka_baselines::peft::write(out, cfg, &m.adapter_vs, &m.backbone)?;
    // The trained head goes with the adapter: peft's `modules_to_save`.
    let cfg_path = out.join("adapter_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    config["modules_to_save"] = json!(["head"]);
    write_json(&cfg_path, &config)?;
    let wpath = out.join("adapter_model.safetensors");
    let mut tensors: Vec<(String, Tensor)> = dka_core::weights::read_safetensors(&wpath)?;
    tensors.extend(
        head.into_iter()
            .map(|(n, t)| (format!("base_model.model.{n}"), t)),
    );
    let mut files = vec![cfg_path, write_named(&wpath, &tensors)?];
    if backbone_included {
        files.push(write_named(
            &out.join("base_model.safetensors"),
            &named(&m.backbone_vs),
        )?);
    }
    Ok(files)
}

/// `--format merged`: every delta folded into its Linear's weight, trained tensors in place.
fn merged(run: &TrainedRun, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let method = &run.cfg.method;
    if !matches!(
        method,
        MethodConfig::Lora(_)
            | MethodConfig::Bitfit(_)
            | MethodConfig::Full(_)
            | MethodConfig::Linear(_)
    ) {
        bail!(
            "{}: {} adds modules that do not fold into the backbone's weights; use --format torch",
            run.dir.display(),
            method.method().name()
        );
    }
    let head = timm_head(run, "merged")?;
    let Backbone::Vit(vit) = &run.model.backbone else {
        unreachable!("checked by export")
    };
    let mut tensors = named(&run.model.backbone_vs);
    tch::no_grad(|| -> anyhow::Result<()> {
        for (i, block) in vit.blocks.iter().enumerate() {
            let sites = [
                ("attn.qkv", &block.sites.qkv),
                ("attn.proj", &block.sites.proj),
                ("mlp.fc1", &block.sites.fc1),
                ("mlp.fc2", &block.sites.fc2),
            ];
            for (layer, site) in sites {
                let Some(delta) = site else { continue };
                let name = format!("blocks.{i}.{layer}.weight");
                let w = &mut tensors
                    .iter_mut()
                    .find(|(n, _)| *n == name)
                    .with_context(|| format!("no {name} in the backbone"))?
                    .1;
                // The delta is linear in its input: its matrix is its value on the identity.
                let din = w.size()[1];
                let eye = Tensor::eye(din, (Kind::Float, w.device()));
                *w = &*w + delta.delta(&eye, false).transpose(0, 1);
            }
        }
        Ok(())
    })?;
    tensors.extend(head);
    let mut files = vec![write_named(&out.join("model.safetensors"), &tensors)?];
    let bcfg = dka_core::BackboneConfig::from_spec(&run.cfg.backbone)?;
    let spec = run.cfg.input_spec()?;
    let interp = serde_json::to_value(spec.interpolation)?;
    let config = json!({
        "architecture": preset_name(&run.cfg.backbone),
        "num_classes": run.classes().len(),
        "num_features": run.model.backbone.num_features(),
        "model_args": bcfg,
        "pretrained_cfg": {
            "input_size": [3, run.cfg.img_size, run.cfg.img_size],
            "interpolation": interp,
            "mean": spec.mean,
            "std": spec.std,
            "crop_pct": 1.0,
            "num_classes": run.classes().len(),
            "label_names": run.classes(),
        },
    });
    files.push(write_json(&out.join("config.json"), &config)?);
    Ok(files)
}

/// timm's architecture name for a backbone spec: the preset, or `vit_custom` for a config file
/// (its fields are in `model_args`).
fn preset_name(backbone: &str) -> String {
    if dka_core::backbone::PRESETS.contains(&backbone) {
        backbone.to_string()
    } else {
        "vit_custom".to_string()
    }
}

/// `check.safetensors`: a normalised input batch (seeded) and dka's fp32 logits for it.
fn check(run: &TrainedRun, out: &Path) -> anyhow::Result<PathBuf> {
    let s = run.cfg.img_size as i64;
    tch::manual_seed(0);
    let x = Tensor::randn([2, 3, s, s], (Kind::Float, Device::Cpu));
    let m = &run.model;
    let logits = tch::no_grad(|| m.head_logits(&m.embed(&x, false), (s, s), false));
    write_named(
        &out.join("check.safetensors"),
        &[("input".to_string(), x), ("logits".to_string(), logits)],
    )
}

/// `README.md`: what the export is, where it came from and how to load it.
fn model_card(
    run: &TrainedRun,
    o: &ExportOptions,
    backbone_included: bool,
) -> anyhow::Result<PathBuf> {
    let method = run.cfg.method.method().name();
    let spec = run.cfg.input_spec()?;
    let metrics = crate::config::record::read_record(&run.dir)
        .map(|r| {
            r.metrics
                .iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.4}")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .or_else(|| std::fs::read_to_string(run.dir.join("result.json")).ok())
        .unwrap_or_else(|| "see the run's log.txt".into());
    let weights = match run.cfg.weights_file() {
        Some(w) => format!(
            "`{}` (sha256 `{}`)",
            w.display(),
            dka_data::files::sha256_file(w).unwrap_or_default()
        ),
        None => "none: a random-initialised backbone (its weights are in this export)".into(),
    };
    let fraction = format!(
        "{} of the training pool, draw {}",
        run.cfg.fraction, run.cfg.draw
    );
    let how = match o.format {
        Format::Torch => format!(
            "```python\nimport sys; sys.path.insert(0, \"python\")  # dka's repository\nimport dka_torch\nmodel = dka_torch.load(\"{}\"{})\nlogits = model(x)  # x: [B, 3, H, W], normalised as below\n```",
            o.out.display(),
            if backbone_included { "" } else { ", backbone_weights=\"BACKBONE.safetensors\"" }
        ),
        Format::Peft => format!(
            "```python\nimport timm\nfrom peft import PeftModel\nbase = timm.create_model(...same ViT..., num_classes={})  # load the backbone weights{}\nmodel = PeftModel.from_pretrained(base, \"{}\")\n```",
            run.classes().len(),
            if backbone_included { " from base_model.safetensors (strict=False: no head)" } else { "" },
            o.out.display()
        ),
        Format::Merged => format!(
            "```python\nimport json, timm\nfrom timm.models.vision_transformer import VisionTransformer\nfrom safetensors.torch import load_file\ncfg = json.load(open(\"{0}/config.json\"))\nmodel = VisionTransformer(**{{k: v for k, v in cfg[\"model_args\"].items() if k != \"arch\"}} | {{\"num_classes\": cfg[\"num_classes\"]}})\nmodel.load_state_dict(load_file(\"{0}/model.safetensors\"), strict=True)\n```",
            o.out.display()
        ),
    };
    let text = format!(
        "# {method} on {backbone}: a dka export ({format:?})\n\n\
         - method: {method} (`{method_json}`)\n\
         - backbone: `{backbone}`; weights: {weights}\n\
         - data: {dataset}, {fraction} (manifest: `{manifest}`)\n\
         - classes: {classes}\n\
         - task: {task}\n\
         - input: `[B, 3, {size}, {size}]`, {scale:?} scaling, mean {mean:?}, std {std:?}, \
           resize {resize:?} ({source})\n\
         - test metrics of the run: {metrics}\n\
         - backbone weights in this export: {included}\n\n\
         `check.safetensors` holds an input batch and dka's logits for it: a loader is right \
         when its logits match them (max |Δ| ≤ 1e-4).\n\n## Loading\n\n{how}\n",
        backbone = run.cfg.backbone,
        format = o.format,
        method_json = serde_json::to_string(&run.cfg.method)?,
        dataset = run.cfg.dataset,
        manifest = run.dir.join("manifest.json").display(),
        classes = run.classes().join(", "),
        task = if run.segmentation() {
            "segmentation: logits [B, C, H, W]"
        } else {
            "classification: logits [B, C]"
        },
        size = run.cfg.img_size,
        scale = spec.scale,
        mean = spec.mean,
        std = spec.std,
        resize = spec.resize,
        source = spec.source,
        included = if backbone_included {
            "yes"
        } else {
            "no (pass backbone_weights)"
        },
    );
    let path = o.out.join("README.md");
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}
