//! `dka params`: trainable and total parameters of a backbone adapted by a method, with a
//! task head of `--num-classes` outputs on the pooled features.
use crate::util::fs::write_atomic;
use anyhow::Context;
use dka_baselines::{MethodConfig, NAMES};
use dka_core::{Backbone, BackboneConfig};
use std::path::Path;
use tch::{nn, Device};

#[derive(Debug, Clone, Copy)]
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

/// The methods a `--method` argument names: a method name or a JSON method-config file; all
/// methods (their defaults) when `None`.
pub fn methods(arg: Option<&str>) -> anyhow::Result<Vec<MethodConfig>> {
    let Some(m) = arg else {
        return Ok(NAMES
            .iter()
            .map(|n| MethodConfig::by_name(n).expect("known"))
            .collect());
    };
    Ok(vec![match MethodConfig::by_name(m) {
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
    }])
}

/// One method's counts on a backbone (`None`: the method does not apply to it).
pub struct ParamRow {
    pub method: String,
    pub count: Option<Count>,
}

impl ParamRow {
    /// Trainable parameters in percent of all.
    pub fn percent(&self) -> f64 {
        self.count
            .map_or(f64::NAN, |c| 100.0 * c.trainable as f64 / c.total as f64)
    }
}

/// The counts of every method in `methods` on `backbone` with a `num_classes` head.
pub fn table(
    backbone: &str,
    methods: &[MethodConfig],
    num_classes: i64,
) -> anyhow::Result<Vec<ParamRow>> {
    let cfg = BackboneConfig::from_spec(backbone)?;
    methods
        .iter()
        .map(|m| {
            Ok(ParamRow {
                method: m.method().name().to_string(),
                count: count(&cfg, m, num_classes)?,
            })
        })
        .collect()
}

/// Writes the table as CSV (atomically) with a `.meta.json` sidecar saying how it was made.
pub fn write_csv(
    path: &Path,
    rows: &[ParamRow],
    backbone: &str,
    num_classes: i64,
    methods: &[MethodConfig],
) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "method",
        "backbone",
        "num_classes",
        "trainable",
        "total",
        "trainable_pct",
    ])?;
    for r in rows {
        let (t, n, p) = match r.count {
            Some(c) => (
                c.trainable.to_string(),
                c.total.to_string(),
                format!("{:.4}", r.percent()),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        w.write_record([
            r.method.as_str(),
            backbone,
            &num_classes.to_string(),
            &t,
            &n,
            &p,
        ])?;
    }
    write_atomic(path, &w.into_inner()?)?;
    let meta = serde_json::json!({
        "what": "trainable and total parameters per method (task head included, BatchNorm buffers excluded); each method at its default settings (dka-baselines MethodConfig::by_name)",
        "methods": methods,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::util::provenance::machine(),
    });
    write_atomic(
        &path.with_extension("meta.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )
}
