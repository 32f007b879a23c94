//! `dka plots`: redraw every figure under a results folder from its CSVs.
use std::path::PathBuf;

/// `dka plots`: redraws every figure from the CSVs under a results folder, without training.
#[derive(clap::Args)]
pub struct Args {
    /// The results folder (every grid folder and ERF folder below it, three levels deep).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Instead: one run's training curves, RUN/curves.png (loss and metric per epoch, from
    /// its metrics.csv). Repeatable.
    #[arg(long, value_name = "RUN")]
    pub run: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.run.is_empty() {
        for r in &a.run {
            println!("{}", crate::report::plots::curves::draw(r)?.display());
        }
        return Ok(());
    }
    let written = crate::report::plots::redraw(&a.results)?;
    for p in &written {
        println!("{}", p.display());
    }
    println!(
        "{} figure(s) redrawn under {} (PNG and SVG)",
        written.len(),
        a.results.display()
    );
    Ok(())
}
