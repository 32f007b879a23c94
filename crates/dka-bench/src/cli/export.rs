//! `dka export RUN --format torch|peft|merged --out DIR`.
use crate::analysis::export::{export, ExportOptions, Format};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A trained run's folder (`dka train --out`, or a grid's `runs/<id>`).
    pub run: PathBuf,
    /// torch: any method, loaded by `python/dka_torch.py` on timm; peft: a LoRA classifier as
    /// peft's folder (head in modules_to_save); merged: LoRA, BitFit, full fine-tuning or
    /// linear probing folded into one timm state dict (classifiers).
    #[arg(long, value_parser = parse_format)]
    pub format: Format,
    /// The folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the backbone's weights (always written for a random-init backbone and for
    /// full fine-tuning; otherwise the loader takes them from the original weights file).
    #[arg(long)]
    pub with_backbone: bool,
    /// The run's backbone weights file, if it has moved since the run.
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("'{s}' is not an export format: use torch, peft or merged"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let o = ExportOptions {
        run: a.run,
        format: a.format,
        out: a.out,
        with_backbone: a.with_backbone,
        weights: a.weights,
    };
    let done = export(&o)?;
    for f in &done.files {
        println!("{}", f.display());
    }
    println!(
        "exported {} as {:?} to {} (backbone weights {}included)",
        o.run.display(),
        o.format,
        o.out.display(),
        if done.backbone_included { "" } else { "not " }
    );
    Ok(())
}
