//! The figures' one font: DejaVu Sans from the system's fonts, registered once as plotters'
//! `sans-serif`. Without it, callers skip their figures with [`missing_warning`] (tables and
//! CSVs are written regardless).
use plotters::style::FontStyle;

/// The family name figures draw text with.
pub const FAMILY: &str = "sans-serif";

const FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers DejaVu Sans as [`FAMILY`] (once); false when no font file is found.
pub fn available() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        FILES.iter().any(|f| {
            std::fs::read(f).ok().is_some_and(|b| {
                plotters::style::register_font(
                    FAMILY,
                    FontStyle::Normal,
                    Box::leak(b.into_boxed_slice()),
                )
                .is_ok()
            })
        })
    })
}

/// The warning a caller logs when it skips `what` for want of a font.
pub fn missing_warning(what: &str) -> String {
    format!(
        "no DejaVu Sans font found ({}); skipping {what}",
        FILES.join(", ")
    )
}
