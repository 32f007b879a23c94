//! Figure 7: DKA's adapter learning rate × head learning rate, a heatmap of mean ± sample std
//! over draws (colour: the mean). Rates are printed as `1e-3`.
use super::parts::{heat_from_cells, Heat, HeatFigure};
use super::tables::Cell;

/// A learning rate as printed: `0.001` -> `1e-3`, `0.05` -> `5e-2`.
pub fn rate(s: &str) -> String {
    match super::style::numeric(s) {
        Some(v) if v > 0.0 && v < 0.1 => {
            let e = v.log10().floor();
            let m = v / 10f64.powf(e);
            if (m - m.round()).abs() < 1e-6 {
                format!("{}e{}", m.round(), e)
            } else {
                format!("{m:.1}e{e}")
            }
        }
        _ => s.to_string(),
    }
}

pub fn data(cells: &[Cell], row_axis: &str, col_axes: &[String], metric: &str) -> Heat {
    heat_from_cells(cells, row_axis, col_axes, metric, rate, rate)
}

pub fn figure<'a>(heat: &'a Heat, title: &'a str) -> HeatFigure<'a> {
    HeatFigure {
        heat,
        title,
        caption: "Cells: mean ± sample std over draws (one number: one draw); colour: the mean; grey: no finished run.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plots::table_bars::tests::cell;

    #[test]
    fn rates_sorted_numerically_and_printed_in_powers_of_ten() {
        assert_eq!(rate("0.001"), "1e-3");
        assert_eq!(rate("0.05"), "5e-2");
        assert_eq!(rate("0.00001"), "1e-5");
        assert_eq!(rate("0.0025"), "2.5e-3");
        let cells = vec![
            cell("0.001", &["0.0001"], 70.0, 1.0, None),
            cell("0.00001", &["0.0001"], 60.0, 1.0, None),
            cell("0.001", &["0.001"], 80.0, 1.0, None),
        ];
        let h = data(
            &cells,
            "optimizer.adapter_lr",
            &["optimizer.head_lr".to_string()],
            "accuracy",
        );
        assert_eq!(h.rows, ["1e-5", "1e-3"], "bottom to top, ascending");
        assert_eq!(h.cols, ["1e-4", "1e-3"]);
        assert_eq!(h.values[0], vec![Some((60.0, 1.0, 3)), None]);
        assert_eq!(
            h.values[1],
            vec![Some((70.0, 1.0, 3)), Some((80.0, 1.0, 3))]
        );
        assert_eq!(h.x_label, "head learning rate");
        assert_eq!(h.y_label, "adapter learning rate");
        assert_eq!(h.range(), (60.0, 80.0));
    }
}
