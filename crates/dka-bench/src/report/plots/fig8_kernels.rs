//! Figure 8: DKA's large × small kernel sizes, a heatmap of mean ± sample std over draws. The
//! caption says what the kernel sizes mean on a ViT's token grid: on an `h × w` grid a
//! depthwise kernel reaches at most `(2h − 1) × (2w − 1)` taps, so on ViT-B/16's 14 × 14 grid
//! every kernel of 27 × 27 or more acts exactly as 27 × 27.
use super::parts::{heat_from_cells, Heat, HeatFigure};
use super::tables::Cell;

/// A kernel size as printed: `51` -> `51×51`.
pub fn kernel(s: &str) -> String {
    match s.parse::<u32>() {
        Ok(k) => format!("{k}×{k}"),
        Err(_) => s.to_string(),
    }
}

pub fn data(cells: &[Cell], row_axis: &str, col_axes: &[String], metric: &str) -> Heat {
    heat_from_cells(cells, row_axis, col_axes, metric, kernel, kernel)
}

/// The caption's note on kernels larger than the token grid.
pub const GRID_NOTE: &str = "On a 14×14 token grid (ViT-B/16 at 224 px) a tap more than 13 \
     rows or columns from the centre only ever meets padding: every kernel of 27×27 or more \
     acts exactly as 27×27, so rows from 27 up differ only by initialisation and training \
     noise.";

pub fn figure<'a>(heat: &'a Heat, title: &'a str) -> HeatFigure<'a> {
    HeatFigure {
        heat,
        title,
        caption: format!("Cells: mean ± sample std over draws; colour: the mean. {GRID_NOTE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::table_bars::tests::cell;

    #[test]
    fn kernel_sizes_sorted_and_printed_as_squares() {
        let cells = vec![
            cell("51", &["5"], 80.0, 1.0, None),
            cell("7", &["5"], 70.0, 1.0, None),
            cell("7", &["3"], 60.0, 1.0, None),
        ];
        let h = data(
            &cells,
            "method.large_kernel",
            &["method.small_kernel".to_string()],
            "accuracy",
        );
        assert_eq!(h.rows, ["7×7", "51×51"]);
        assert_eq!(h.cols, ["3×3", "5×5"]);
        assert_eq!(h.values[1], vec![None, Some((80.0, 1.0, 3))]);
        assert_eq!(h.y_label, "large kernel size (px)");
        assert!(figure(&h, "t").caption.contains("acts exactly as 27×27"));
    }
}
