//! The metrics' names: which a task reports, in `metrics.csv` order, which one is the paper's
//! number, and how tables title them.

/// Classification metrics, in `metrics.csv` order; `accuracy` is the paper's number.
pub const CLASSIFICATION: [&str; 4] = ["accuracy", "balanced_accuracy", "macro_f1", "auc"];
/// Segmentation metrics; `miou_foreground` (IoU over the non-background classes) is the
/// paper's number, `miou` includes the background, `dice_foreground` is Dice over the
/// non-background classes.
pub const SEGMENTATION: [&str; 3] = ["miou_foreground", "miou", "dice_foreground"];

/// The metric names of a task.
pub fn metric_names(segmentation: bool) -> &'static [&'static str] {
    if segmentation {
        &SEGMENTATION
    } else {
        &CLASSIFICATION
    }
}

/// The paper's number: accuracy for classification, foreground IoU for segmentation (the
/// paper's "mIoU" cannot include the background: see METHODS.md, Metrics).
pub fn primary_metric(segmentation: bool) -> &'static str {
    metric_names(segmentation)[0]
}

/// A metric's name as tables print it.
pub fn metric_title(name: &str) -> &str {
    match name {
        "accuracy" => "accuracy",
        "balanced_accuracy" => "balanced accuracy",
        "macro_f1" => "macro-F1",
        "auc" => "AUC (one-vs-rest)",
        "miou_foreground" => "foreground IoU",
        "miou" => "mIoU over all classes incl. background",
        "dice_foreground" => "foreground Dice",
        other => other,
    }
}
