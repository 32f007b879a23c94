//! Progress bars, shown only on a terminal (logs and CI stay clean).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        b.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {what} {{bar:30}} {{pos}}/{{len}} [{{elapsed}} < {{eta}}] {{msg}}"
            ))
            .expect("template")
            .progress_chars("=> "),
        );
    } else {
        b.set_draw_target(ProgressDrawTarget::hidden());
    }
    b
}
