//! Progress bars, shown only on a terminal (logs and CI stay clean), all drawn by one
//! `MultiProgress` so that nested bars (a grid's runs, a run's steps) stack instead of
//! overwriting each other, and log lines ([`stderr`]) print above them.
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::LazyLock;

static BARS: LazyLock<MultiProgress> = LazyLock::new(|| {
    if shown() {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
});

/// Whether bars are drawn: stderr is a terminal, and this is not a `dka grid --workers`
/// worker (`DKA_NO_BARS`; the parent draws the grid's bar).
pub fn shown() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("DKA_NO_BARS").is_none()
}

/// A bar of `len` steps named `what`, with an ETA and a message slot.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    styled(
        len,
        &format!("{{spinner}} {what} {{bar:30}} {{pos}}/{{len}} [{{elapsed}} < {{eta}}] {{msg}}"),
    )
}

/// A bar with indicatif `template` (`{pos}`, `{len}`, `{msg}`, ...), hidden off a terminal.
pub fn styled(len: u64, template: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let b = BARS.add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template(template)
            .expect("template")
            .progress_chars("=> "),
    );
    b
}

/// Ends `bar` and frees its line.
pub fn done(bar: &ProgressBar) {
    bar.finish_and_clear();
    BARS.remove(bar);
}

/// Standard error that first lifts the bars, so a log line is not drawn over by them (the
/// `tracing` subscriber's writer).
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The writer for `tracing_subscriber::fmt().with_writer(...)`.
pub fn stderr() -> Stderr {
    Stderr
}
