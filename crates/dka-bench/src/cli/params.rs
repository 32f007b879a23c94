//! `dka params`: trainable and total parameters of a backbone under each method.
use crate::analysis::params::{methods, table, write_csv};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Backbone preset or JSON config.
    #[arg(long, default_value = "vit_base_patch16_224")]
    pub backbone: String,
    /// A method name (full, linear, bitfit, vpt, lora, adapter, adaptformer, convpass, ciat,
    /// aim, dka) with its default settings, or a JSON file of a method config; all if omitted.
    #[arg(long)]
    pub method: Option<String>,
    /// Outputs of the task head.
    #[arg(long, default_value_t = 3)]
    pub num_classes: i64,
    /// Also write the table as CSV (with a .meta.json sidecar saying how it was made).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let methods = methods(a.method.as_deref())?;
    let rows = table(&a.backbone, &methods, a.num_classes)?;
    println!(
        "{:<12} {:>14} {:>14} {:>10}",
        "method", "trainable", "total", "trainable%"
    );
    for r in &rows {
        match r.count {
            Some(c) => println!(
                "{:<12} {:>14} {:>14} {:>9.3}%",
                r.method,
                c.trainable,
                c.total,
                r.percent()
            ),
            None => println!("{:<12} {:>14} {:>14} {:>10}", r.method, "n/a", "n/a", ""),
        }
    }
    if let Some(path) = &a.output {
        write_csv(path, &rows, &a.backbone, a.num_classes, &methods)?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}
