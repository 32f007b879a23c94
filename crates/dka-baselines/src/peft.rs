//! LoRA adapters in peft's format: a folder with `adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<timm path>.lora_{A,B}.weight`
//! (`Linear`: A `[r, in]`, B `[out, r]`; `Conv2d`: A `[r, c_in, k, k]`, B `[c_out, r, 1, 1]`).
//!
//! peft adapts whole modules, so LoRA on q/v slices of a fused `qkv` is written exactly as one
//! qkv LoRA of rank `r·slices`: A stacks the slices' A's, B is block-diagonal over the slices'
//! output rows (zero rows for the slices without LoRA), and `lora_alpha` is scaled by the same
//! factor so that `alpha / r` is unchanged. Such a file loads back here as a whole-qkv LoRA with
//! identical outputs. Other targets are then zero-padded to the same rank, also exactly. TinyViT's
//! `qkv` orders its rows per head: the fused B's rows are permuted into that order.
use crate::lora::{site_path, ConvTarget, LoraConfig};
use dka_core::sites::LINEAR_SITES;
use dka_core::{Backbone, CoreError, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

const PREFIX: &str = "base_model.model.";

fn io_err(path: &Path, err: std::io::Error) -> CoreError {
    CoreError::Io {
        path: path.into(),
        err,
    }
}

fn cfg_err(path: &Path, message: impl Into<String>) -> CoreError {
    CoreError::Config {
        path: path.into(),
        message: message.into(),
    }
}

/// Reads a peft LoRA folder: the equivalent [`LoraConfig`] (whole-module targets) and the
/// tensors under our names (`blocks.0.attn.qkv.lora_A.weight`).
pub fn read(dir: &Path) -> Result<(LoraConfig, BTreeMap<String, Tensor>)> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| io_err(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| cfg_err(&cfg_path, e.to_string()))?;
    if v["peft_type"] != "LORA" {
        return Err(cfg_err(
            &cfg_path,
            format!("peft_type {} is not LORA", v["peft_type"]),
        ));
    }
    for (flag, bad) in [
        ("use_rslora", json!(true)),
        ("use_dora", json!(true)),
        ("fan_in_fan_out", json!(true)),
    ] {
        if v[flag] == bad {
            return Err(cfg_err(
                &cfg_path,
                format!("{flag} = true is not supported"),
            ));
        }
    }
    if !(v["bias"].is_null() || v["bias"] == "none") {
        return Err(cfg_err(
            &cfg_path,
            format!("bias = {} is not supported (only \"none\")", v["bias"]),
        ));
    }
    let names: Vec<String> = match &v["target_modules"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => {
            return Err(cfg_err(
                &cfg_path,
                format!("target_modules is a regex ({s:?}); list the module names instead"),
            ))
        }
        other => {
            return Err(cfg_err(
                &cfg_path,
                format!("target_modules {other} is not a list"),
            ))
        }
    };
    let (mut targets, mut conv_targets) = (Vec::<String>::new(), Vec::<ConvTarget>::new());
    for name in &names {
        let last = name.rsplit('.').next().unwrap_or(name);
        if LINEAR_SITES.contains(&last) {
            if !targets.iter().any(|t| t == last) {
                targets.push(last.to_string());
            }
        } else if let Some(c) = ConvTarget::from_name(last) {
            if !conv_targets.contains(&c) {
                conv_targets.push(c);
            }
        } else {
            return Err(cfg_err(
                &cfg_path,
                format!(
                    "target module '{name}' is not one of {LINEAR_SITES:?} (transformers) or conv1, conv2, conv3 (ResNet blocks)"
                ),
            ));
        }
    }
    conv_targets.sort();
    let r = v["r"]
        .as_i64()
        .ok_or_else(|| cfg_err(&cfg_path, "missing integer r"))?;
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| cfg_err(&cfg_path, "missing lora_alpha"))?;
    let layers = match v["layers_to_transform"].as_array() {
        Some(a) => Some(
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect(),
        ),
        None => layers_of(&names).map_err(|m| cfg_err(&cfg_path, m))?,
    };
    let cfg = LoraConfig {
        r,
        alpha,
        targets,
        qkv_parts: "qkv".into(),
        conv_targets,
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        layers,
    };
    let wpath = dir.join("adapter_model.safetensors");
    let mut tensors = BTreeMap::new();
    for (name, t) in dka_core::weights::read_safetensors(&wpath)? {
        let Some(ours) = name.strip_prefix(PREFIX) else {
            return Err(cfg_err(
                &wpath,
                format!("key '{name}' does not start with '{PREFIX}'"),
            ));
        };
        // peft may keep the adapter name inside the key (`lora_A.default.weight`).
        tensors.insert(ours.replace(".default.", "."), t);
    }
    Ok((cfg, tensors))
}

/// Blocks or stages named by full module names (`blocks.3.attn.qkv`, `layer2.0.conv2`);
/// `None` when the names are bare (`qkv`: every block).
fn layers_of(names: &[String]) -> std::result::Result<Option<Vec<usize>>, String> {
    if names.iter().all(|n| !n.contains('.')) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for n in names {
        let index = if let Some(rest) = n.strip_prefix("blocks.") {
            rest.split('.').next().and_then(|i| i.parse::<usize>().ok())
        } else if let Some(rest) = n.strip_prefix("layer") {
            rest.split('.')
                .next()
                .and_then(|k| k.parse::<usize>().ok())
                .and_then(|k| k.checked_sub(1))
        } else {
            None
        };
        match index {
            Some(i) if n.contains('.') => out.push(i),
            _ => {
                return Err(format!(
                    "cannot tell which block or stage module '{n}' is in (known: blocks.N.*, layerK.N.*)"
                ))
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

fn get(vars: &std::collections::HashMap<String, Tensor>, dir: &Path, name: &str) -> Result<Tensor> {
    vars.get(name)
        .map(|t| t.detach())
        .ok_or_else(|| cfg_err(dir, format!("adapter tensor {name} is missing")))
}

/// peft's `adapter_config.json` for the given rank, alpha, targets and layers.
fn config_json(cfg: &LoraConfig, r: i64, alpha: f64, targets: Value, layers: Value) -> Value {
    json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "lora_dropout": cfg.dropout,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": layers,
        "init_lora_weights": true,
        "inference_mode": true,
        "task_type": null,
        "base_model_name_or_path": null,
        "modules_to_save": null,
    })
}

/// Writes the LoRA tensors of `adapters` (built by `cfg` on `backbone`) as a peft folder.
///
/// ResNet convs are listed in `target_modules` by full name (`layer1.0.conv2`): a bare `conv1`
/// would also catch the stem's `conv1` in peft. Transformer layers are listed by their short
/// names with `layers_to_transform` (ViT, SAM ViT), or by full name for a subset of TinyViT's
/// blocks (peft's layer pattern cannot index `layers.S.blocks.N`; [`read`] refuses those).
pub fn write(dir: &Path, cfg: &LoraConfig, adapters: &VarStore, backbone: &Backbone) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let vars = adapters.variables();
    let (out, config) = if let Backbone::ResNet(_) = backbone {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut out = Vec::new();
        let mut modules = Vec::new();
        for name in names {
            if let Some(m) = name.strip_suffix(".lora_A.weight") {
                modules.push(m.to_string());
            } else if !name.ends_with(".lora_B.weight") {
                return Err(cfg_err(dir, format!("{name} is not a LoRA tensor")));
            }
            out.push((
                format!("{PREFIX}{name}"),
                get(&vars, dir, name)?.contiguous(),
            ));
        }
        let config = config_json(cfg, cfg.r, cfg.alpha, json!(modules), Value::Null);
        (out, config)
    } else {
        write_linear(dir, cfg, &vars, backbone)?
    };
    let cfg_path = dir.join("adapter_config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&config).expect("json"),
    )
    .map_err(|e| io_err(&cfg_path, e))?;
    let wpath = dir.join("adapter_model.safetensors");
    Tensor::write_safetensors(&out, &wpath).map_err(|e| cfg_err(&wpath, e.to_string()))
}

type Named = Vec<(String, Tensor)>;

/// Transformer LoRA: q/v slices fused into one whole-`qkv` LoRA of rank `r·slices`.
fn write_linear(
    dir: &Path,
    cfg: &LoraConfig,
    vars: &std::collections::HashMap<String, Tensor>,
    backbone: &Backbone,
) -> Result<(Named, Value)> {
    let slots = cfg.slots();
    let fused = cfg.targets.iter().any(|t| t == "qkv") && slots.len() < 3;
    let k = if fused { slots.len() as i64 } else { 1 };
    let mut out: Named = Vec::new();
    let mut modules = Vec::new();
    let blocks = backbone.token_blocks();
    for (i, info) in blocks.iter().enumerate() {
        if !dka_core::method::selected(&cfg.layers, i) {
            continue;
        }
        for target in &cfg.targets {
            let base = site_path(&info.path, target);
            modules.push(base.clone());
            let (a, b) = if target == "qkv" && fused {
                let parts: Vec<(i64, Tensor, Tensor)> = slots
                    .iter()
                    .map(|&s| {
                        let l = &"qkv"[s as usize..s as usize + 1];
                        Ok((
                            s,
                            get(vars, dir, &format!("{base}.lora_A_{l}.weight"))?,
                            get(vars, dir, &format!("{base}.lora_B_{l}.weight"))?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                let (d, r) = (parts[0].2.size()[0], cfg.r);
                let a = Tensor::cat(
                    &parts
                        .iter()
                        .map(|p| p.1.shallow_clone())
                        .collect::<Vec<_>>(),
                    0,
                );
                let b = Tensor::zeros([3 * d, r * k], (a.kind(), a.device()));
                for (j, (s, _, bj)) in parts.iter().enumerate() {
                    b.narrow(0, s * d, d).narrow(1, j as i64 * r, r).copy_(bj);
                }
                // B's rows are [q | k | v]; put them in the layer's own order.
                let perm = Tensor::from_slice(&info.qkv.grouped_rows(d)).to_device(b.device());
                (a, b.index_select(0, &perm))
            } else {
                // Other targets are padded to the same rank with zeros (exact: alpha scales too).
                let (a, b) = (
                    get(vars, dir, &format!("{base}.lora_A.weight"))?,
                    get(vars, dir, &format!("{base}.lora_B.weight"))?,
                );
                let extra = cfg.r * (k - 1);
                (
                    a.constant_pad_nd([0, 0, 0, extra]),
                    b.constant_pad_nd([0, extra]),
                )
            };
            out.push((format!("{PREFIX}{base}.lora_A.weight"), a.contiguous()));
            out.push((format!("{PREFIX}{base}.lora_B.weight"), b.contiguous()));
        }
    }
    let by_index = blocks.iter().all(|b| b.path.starts_with("blocks."));
    let (targets, layers) = if cfg.layers.is_none() || by_index {
        (json!(cfg.targets), json!(cfg.layers))
    } else {
        (json!(modules), Value::Null)
    };
    let config = config_json(cfg, cfg.r * k, cfg.alpha * k as f64, targets, layers);
    Ok((out, config))
}
