//! LoRA adapters in peft's format: a folder with `adapter_config.json` and
//! `adapter_model.safetensors`, keys `base_model.model.<timm path>.lora_{A,B}.weight`.
//!
//! peft adapts whole modules, so LoRA on q/v slices of a fused `qkv` is written exactly as one
//! qkv LoRA of rank `r·slices`: A stacks the slices' A's, B is block-diagonal over the slices'
//! output rows (zero rows for the slices without LoRA), and `lora_alpha` is scaled by the same
//! factor so that `alpha / r` is unchanged. Such a file loads back here as a whole-qkv LoRA with
//! identical outputs. Other targets are then zero-padded to the same rank, also exactly.
use crate::lora::{site_path, LoraConfig};
use dka_core::sites::LINEAR_SITES;
use dka_core::{CoreError, Result};
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
    let targets: Vec<String> = match &v["target_modules"] {
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
    let targets: Vec<String> = targets
        .into_iter()
        .map(|t| t.rsplit('.').next().unwrap_or(&t).to_string())
        .collect();
    if let Some(t) = targets.iter().find(|t| !LINEAR_SITES.contains(&t.as_str())) {
        return Err(cfg_err(
            &cfg_path,
            format!("target module '{t}' is not one of {LINEAR_SITES:?}"),
        ));
    }
    let r = v["r"]
        .as_i64()
        .ok_or_else(|| cfg_err(&cfg_path, "missing integer r"))?;
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| cfg_err(&cfg_path, "missing lora_alpha"))?;
    let layers = v["layers_to_transform"].as_array().map(|a| {
        a.iter()
            .filter_map(|x| x.as_u64().map(|x| x as usize))
            .collect()
    });
    let cfg = LoraConfig {
        r,
        alpha,
        targets,
        qkv_parts: "qkv".into(),
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

/// Writes the LoRA tensors of `adapters` (built by `cfg`) as a peft folder.
pub fn write(dir: &Path, cfg: &LoraConfig, adapters: &VarStore, depth: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let vars = adapters.variables();
    let slots = cfg.slots();
    let fused = cfg.targets.iter().any(|t| t == "qkv") && slots.len() < 3;
    let k = if fused { slots.len() as i64 } else { 1 };
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let get = |name: &str| {
        vars.get(name)
            .map(|t| t.detach())
            .ok_or_else(|| cfg_err(dir, format!("adapter tensor {name} is missing")))
    };
    for i in (0..depth).filter(|i| dka_core::method::selected(&cfg.layers, *i)) {
        for target in &cfg.targets {
            let base = site_path(i, target);
            let (a, b) = if target == "qkv" && fused {
                let parts: Vec<(i64, Tensor, Tensor)> = slots
                    .iter()
                    .map(|&s| {
                        let l = &"qkv"[s as usize..s as usize + 1];
                        Ok((
                            s,
                            get(&format!("{base}.lora_A_{l}.weight"))?,
                            get(&format!("{base}.lora_B_{l}.weight"))?,
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
                (a, b)
            } else {
                // Other targets are padded to the same rank with zeros (exact: alpha scales too).
                let (a, b) = (
                    get(&format!("{base}.lora_A.weight"))?,
                    get(&format!("{base}.lora_B.weight"))?,
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
    let config = json!({
        "peft_type": "LORA",
        "r": cfg.r * k,
        "lora_alpha": cfg.alpha * k as f64,
        "target_modules": cfg.targets,
        "lora_dropout": cfg.dropout,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": cfg.layers,
        "init_lora_weights": true,
        "inference_mode": true,
        "task_type": null,
        "base_model_name_or_path": null,
        "modules_to_save": null,
    });
    let cfg_path = dir.join("adapter_config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&config).expect("json"),
    )
    .map_err(|e| io_err(&cfg_path, e))?;
    let wpath = dir.join("adapter_model.safetensors");
    Tensor::write_safetensors(&out, &wpath).map_err(|e| cfg_err(&wpath, e.to_string()))
}
