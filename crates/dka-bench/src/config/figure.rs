//! Which figure a grid gets and what it is drawn from: an experiment's `plot`, and
//! `figure.json` in a grid's folder, so that `dka plots` redraws it from the folder alone.
use serde::{Deserialize, Serialize};

/// Which figure a grid gets (an experiment's `plot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    /// Tables 1–3 and the demo: grouped bars of ours, the paper's numbers beside them.
    #[default]
    Bars,
    /// Figure 1: gain over linear probing against the training-data fraction (log axis).
    #[serde(alias = "lines")]
    Gain,
    /// Figure 5: score against trainable parameters (log axis).
    Params,
    /// Figure 7: a heatmap of the row axis × the column axes (learning rates).
    Heatmap,
    /// Figure 8: the kernel-size heatmap, with the note on kernels larger than the token grid.
    Kernels,
    /// Figure 9: grouped bars of large only, small only, both.
    Branches,
}

/// What a grid's figure is drawn from; `figure.json` in the grid's folder, so `dka plots`
/// redraws it from the folder alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureSpec {
    pub kind: PlotKind,
    /// What the figure shows, built from its runs (`report::titles`).
    pub title: String,
    /// The paper's setting the experiment reproduces, under the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    pub metric: String,
    pub row_axis: String,
    pub col_axes: Vec<String>,
}
