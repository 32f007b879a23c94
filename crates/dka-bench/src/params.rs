//! `dka params`: trainable and total parameters of a backbone adapted by a method, with a
//! task head of `--num-classes` outputs on the pooled features.
use anyhow::Context;
use dka_baselines::{MethodConfig, NAMES};
use dka_core::{Backbone, BackboneConfig};
use std::path::PathBuf;
use tch::{nn, Device};

#[derive(clap::Args)]
pub struct Args {
    /// Backbone preset or JSON config.
    #[arg(long, default_value = "vit_base_patch16_224")]
    backbone: String,
    /// A method name (full, linear, bitfit, vpt, lora, adapter, adaptformer, convpass, ciat,
    /// aim, dka) with its default settings, or a JSON file of a method config; all if omitted.
    #[arg(long)]
    method: Option<String>,
    /// Outputs of the task head.
    #[arg(long, default_value_t = 3)]
    num_classes: i64,
    /// Also write the table as CSV (with a .meta.json sidecar saying how it was made).
    #[arg(long)]
    output: Option<PathBuf>,
}

pub struct Count {
    pub trainable: i64,
    pub total: i64,
}

/// Counts for one method, or `None` when the method does not apply to the backbone.
pub fn count(
    cfg: &BackboneConfig,
    method: &MethodConfig,
    num_classes: i64,
) -> anyhow::Result<Option<Count>> {
    let mut cfg = cfg.clone();
    cfg.set_num_classes(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut backbone = Backbone::new(&vs.root(), &cfg)?;
    let avs = nn::VarStore::new(Device::Cpu);
    match method.method().attach(&mut backbone, &avs.root()) {
        Err(dka_core::CoreError::Unsupported { .. }) => return Ok(None),
        r => r?,
    }
    let numel = |t: &tch::Tensor| t.numel() as i64;
    let head = backbone.num_features() * num_classes + num_classes;
    let m = method.method();
    // Buffers (BatchNorm running statistics) are not parameters.
    let backbone_vars: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !n.contains("running_") && !n.ends_with("num_batches_tracked"))
        .collect();
    let adapter: i64 = avs.variables().values().map(numel).sum();
    let frozen_or_not: i64 = backbone_vars.iter().map(|(_, t)| numel(t)).sum();
    let trained_backbone: i64 = backbone_vars
        .iter()
        .filter(|(n, _)| m.trains_backbone(n))
        .map(|(_, t)| numel(t))
        .sum();
    Ok(Some(Count {
        trainable: adapter + trained_backbone + head,
        total: frozen_or_not + adapter + head,
    }))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = BackboneConfig::from_spec(&a.backbone)?;
    let methods: Vec<MethodConfig> = match &a.method {
        None => NAMES
            .iter()
            .map(|n| MethodConfig::by_name(n).expect("known"))
            .collect(),
        Some(m) => vec![match MethodConfig::by_name(m) {
            Some(c) => c,
            None => {
                let text = std::fs::read_to_string(m).with_context(|| {
                    format!(
                        "'{m}' is neither a method name ({}) nor a readable file",
                        NAMES.join(", ")
                    )
                })?;
                serde_json::from_str(&text).with_context(|| format!("{m}: not a method config"))?
            }
        }],
    };
    let mut rows = Vec::new();
    println!(
        "{:<12} {:>14} {:>14} {:>10}",
        "method", "trainable", "total", "trainable%"
    );
    for method in &methods {
        let name = method.method().name();
        match count(&cfg, method, a.num_classes)? {
            Some(c) => {
                let pct = 100.0 * c.trainable as f64 / c.total as f64;
                println!("{name:<12} {:>14} {:>14} {pct:>9.3}%", c.trainable, c.total);
                rows.push((name, Some(c), pct));
            }
            None => {
                println!("{name:<12} {:>14} {:>14} {:>10}", "n/a", "n/a", "");
                rows.push((name, None, f64::NAN));
            }
        }
    }
    if let Some(path) = &a.output {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("csv.partial");
        let mut w = csv::Writer::from_path(&tmp).with_context(|| tmp.display().to_string())?;
        w.write_record([
            "method",
            "backbone",
            "num_classes",
            "trainable",
            "total",
            "trainable_pct",
        ])?;
        for (name, c, pct) in &rows {
            let (t, n, p) = match c {
                Some(c) => (
                    c.trainable.to_string(),
                    c.total.to_string(),
                    format!("{pct:.4}"),
                ),
                None => (String::new(), String::new(), String::new()),
            };
            w.write_record([
                name,
                a.backbone.as_str(),
                &a.num_classes.to_string(),
                &t,
                &n,
                &p,
            ])?;
        }
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        let meta = serde_json::json!({
            "what": "trainable and total parameters per method (task head included, BatchNorm buffers excluded); each method at its default settings (dka-baselines MethodConfig::by_name)",
            "methods": methods,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": crate::info::machine(),
        });
        std::fs::write(
            path.with_extension("meta.json"),
            serde_json::to_string_pretty(&meta)?,
        )?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}
