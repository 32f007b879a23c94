//! Metrics on plain data (no tensors): classification (accuracy — the paper's number —,
//! balanced accuracy, macro-F1, one-vs-rest AUC) and segmentation (mIoU over all classes
//! including background — the paper's number —, foreground mIoU, foreground Dice).
//!
//! Conventions follow scikit-learn where it has one: `balanced_accuracy_score`,
//! `f1_score(average="macro", zero_division=0)`, `roc_auc_score(multi_class="ovr",
//! average="macro")` (except that classes without both positives and negatives are skipped
//! instead of raising). Every value is a fraction in [0, 1]; NaN means "undefined".
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    /// Mean recall over the classes present in the labels.
    pub balanced_accuracy: f64,
    /// Mean F1 over all `classes` (`2·TP / (support + predicted)`); a class never predicted
    /// and never present counts 0 (scikit-learn's `zero_division=0`).
    pub macro_f1: f64,
    /// One-vs-rest macro AUC over classes with both positives and negatives (binary: class
    /// 1's AUC); NaN when no class qualifies.
    pub auc: f64,
}

/// AUC of `scores` for `positive`: the Mann–Whitney U statistic, `(R⁺ − n⁺(n⁺+1)/2) /
/// (n⁺·n⁻)` with `R⁺` the sum of the positives' ranks, tied scores sharing their average
/// rank (= the probability that a random positive outscores a random negative, ties counting
/// ½). `None` without positives or without negatives. NaN scores rank above everything.
pub fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        positive.len(),
        "AUC: scores and labels differ in length"
    );
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // 0-based positions i..=j share the 1-based rank (i+1 + j+1) / 2.
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    let sum_pos: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(r, _)| r)
        .sum();
    let (n_pos, n_neg) = (n_pos as f64, n_neg as f64);
    Some((sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// Index of the largest value, the first one on ties (like `torch.argmax`/`numpy.argmax`).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate().skip(1) {
        if v.total_cmp(&row[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// `probs`: row-major `[n, classes]` probabilities (or any scores: only their order matters);
/// `labels`: `n` class indices in `0..classes`. Predictions are the row-wise argmax. With no
/// samples every value is NaN.
///
/// Panics when the lengths disagree or a label is outside `0..classes` (a caller's bug).
pub fn classification_metrics(
    probs: &[f32],
    classes: usize,
    labels: &[i64],
) -> ClassificationMetrics {
    assert!(
        classes > 0,
        "classification metrics need at least one class"
    );
    let n = labels.len();
    assert_eq!(
        probs.len(),
        n * classes,
        "probabilities ({}) do not match {n} labels x {classes} classes",
        probs.len()
    );
    if let Some(&y) = labels.iter().find(|&&y| y < 0 || y as usize >= classes) {
        panic!("label {y} is outside 0..{classes}");
    }
    if n == 0 {
        let nan = f64::NAN;
        return ClassificationMetrics {
            accuracy: nan,
            balanced_accuracy: nan,
            macro_f1: nan,
            auc: nan,
        };
    }
    let pred: Vec<usize> = probs.chunks(classes).map(argmax).collect();
    // cm[true][predicted]
    let mut cm = vec![vec![0usize; classes]; classes];
    for (&y, &p) in labels.iter().zip(&pred) {
        cm[y as usize][p] += 1;
    }
    let correct: usize = (0..classes).map(|c| cm[c][c]).sum();
    let support: Vec<usize> = cm.iter().map(|r| r.iter().sum()).collect();
    let predicted: Vec<usize> = (0..classes)
        .map(|c| cm.iter().map(|r| r[c]).sum())
        .collect();
    let present: Vec<usize> = (0..classes).filter(|&c| support[c] > 0).collect();
    let balanced = present
        .iter()
        .map(|&c| cm[c][c] as f64 / support[c] as f64)
        .sum::<f64>()
        / present.len() as f64;
    let f1 = (0..classes)
        .map(|c| {
            let denom = support[c] + predicted[c];
            if denom == 0 {
                0.0
            } else {
                2.0 * cm[c][c] as f64 / denom as f64
            }
        })
        .sum::<f64>()
        / classes as f64;
    let column = |c: usize| -> Vec<f32> { probs.chunks(classes).map(|r| r[c]).collect() };
    let is = |c: usize| -> Vec<bool> { labels.iter().map(|&y| y as usize == c).collect() };
    let aucs: Vec<f64> = if classes == 2 {
        auc(&column(1), &is(1)).into_iter().collect()
    } else {
        (0..classes)
            .filter_map(|c| auc(&column(c), &is(c)))
            .collect()
    };
    ClassificationMetrics {
        accuracy: correct as f64 / n as f64,
        balanced_accuracy: balanced,
        macro_f1: f1,
        auc: mean(&aucs),
    }
}

/// Mean, NaN for no values.
fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentationMetrics {
    /// Mean IoU over every class that occurs in the predictions or the targets of the whole
    /// evaluation set, background included (the paper's mIoU).
    pub miou: f64,
    /// The same over the foreground classes (1..).
    pub miou_foreground: f64,
    /// Mean Dice (`2·TP / (|pred| + |target|)`) over the foreground classes that occur.
    pub dice_foreground: f64,
    /// IoU per class, NaN for a class absent from both predictions and targets.
    pub per_class_iou: Vec<f64>,
}

/// A confusion matrix accumulated over a whole evaluation set (pixels): IoU and Dice come from
/// the totals, not from per-image averages.
#[derive(Debug, Clone)]
pub struct Confusion {
    n: usize,
    /// `m[target * n + pred]`
    m: Vec<u64>,
    ignored: u64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            n: classes,
            m: vec![0; classes * classes],
            ignored: 0,
        }
    }

    /// Adds predicted and target class maps of the same length. A target outside
    /// `0..classes` — an ignore index such as 255 or -1 — skips its pixel (counted in
    /// [`Self::ignored`]).
    ///
    /// Panics when the lengths differ or a prediction is outside `0..classes` (a caller's
    /// bug: dropping those pixels would inflate the scores).
    pub fn add(&mut self, pred: &[i64], target: &[i64]) {
        assert_eq!(
            pred.len(),
            target.len(),
            "prediction and target maps differ in length"
        );
        let n = self.n as i64;
        for (&p, &t) in pred.iter().zip(target) {
            if !(0..n).contains(&t) {
                self.ignored += 1;
                continue;
            }
            assert!((0..n).contains(&p), "predicted class {p} is outside 0..{n}");
            self.m[t as usize * self.n + p as usize] += 1;
        }
    }

    /// Pixels skipped because their target was outside `0..classes`.
    #[allow(dead_code)] // for the evaluator to report; unused by the binary so far
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The count of pixels of class `target` predicted as `pred`.
    pub fn get(&self, target: usize, pred: usize) -> u64 {
        self.m[target * self.n + pred]
    }

    /// Adds another set's counts (the confusion of a case is the sum of its slices').
    pub fn merge(&mut self, other: &Confusion) {
        assert_eq!(self.n, other.n, "confusions of different class counts");
        for (a, b) in self.m.iter_mut().zip(&other.m) {
            *a += b;
        }
        self.ignored += other.ignored;
    }

    fn row(&self, c: usize) -> u64 {
        (0..self.n).map(|p| self.get(c, p)).sum()
    }

    fn col(&self, c: usize) -> u64 {
        (0..self.n).map(|t| self.get(t, c)).sum()
    }

    /// IoU of class `c`; `None` when it is in neither the predictions nor the targets.
    pub fn iou(&self, c: usize) -> Option<f64> {
        let tp = self.get(c, c);
        let union = self.row(c) + self.col(c) - tp;
        (union > 0).then(|| tp as f64 / union as f64)
    }

    /// Dice of class `c`; `None` when it is in neither the predictions nor the targets.
    pub fn dice(&self, c: usize) -> Option<f64> {
        let denom = self.row(c) + self.col(c);
        (denom > 0).then(|| 2.0 * self.get(c, c) as f64 / denom as f64)
    }

    pub fn metrics(&self) -> SegmentationMetrics {
        let n = self.n;
        let iou: Vec<Option<f64>> = (0..n).map(|c| self.iou(c)).collect();
        let dice: Vec<Option<f64>> = (0..n).map(|c| self.dice(c)).collect();
        let mean_some = |v: &[Option<f64>]| mean(&v.iter().flatten().copied().collect::<Vec<_>>());
        let fg = 1.min(n);
        SegmentationMetrics {
            miou: mean_some(&iou),
            miou_foreground: mean_some(&iou[fg..]),
            dice_foreground: mean_some(&dice[fg..]),
            per_class_iou: iou.iter().map(|x| x.unwrap_or(f64::NAN)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// AUC by counting every (positive, negative) pair: a win 1, a tie ½.
    fn auc_by_pairs(s: &[f32], y: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if y[i] && !y[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn classification_by_hand() {
        // labels 0 0 1 2, predictions (argmax) 0 1 1 1.
        let probs = [0.8, 0.1, 0.1, 0.3, 0.6, 0.1, 0.2, 0.7, 0.1, 0.2, 0.5, 0.3];
        let m = classification_metrics(&probs, 3, &[0, 0, 1, 2]);
        // 2 of 4 correct.
        assert!(close(m.accuracy, 0.5));
        // Recalls: class 0 1/2, class 1 1/1, class 2 0/1 -> (0.5 + 1 + 0) / 3 = 0.5.
        assert!(close(m.balanced_accuracy, 0.5));
        // F1 = 2TP/(support+predicted): class 0 2·1/(2+1) = 2/3, class 1 2·1/(1+3) = 1/2,
        // class 2 0/(1+0) = 0 -> (2/3 + 1/2 + 0) / 3 = 7/18.
        assert!(close(m.macro_f1, 7.0 / 18.0));
        // One-vs-rest, each class has positives and negatives:
        // class 0 scores (pos 0.8, 0.3 | neg 0.2, 0.2): 4 wins of 4 -> 1.
        // class 1 scores (pos 0.7 | neg 0.1, 0.6, 0.5): 3 of 3 -> 1.
        // class 2 scores (pos 0.3 | neg 0.1, 0.1, 0.1): 3 of 3 -> 1.
        assert!(close(m.auc, 1.0));
    }

    #[test]
    fn balanced_accuracy_skips_absent_classes_and_f1_counts_them_as_zero() {
        // 3 classes, class 2 neither present nor predicted. labels 0 1 1, predictions 0 1 0.
        let probs = [0.9, 0.1, 0.0, 0.2, 0.8, 0.0, 0.6, 0.4, 0.0];
        let m = classification_metrics(&probs, 3, &[0, 1, 1]);
        assert!(close(m.accuracy, 2.0 / 3.0));
        // Recalls over present classes: class 0 1/1, class 1 1/2 -> 0.75.
        assert!(close(m.balanced_accuracy, 0.75));
        // F1: class 0 2·1/(1+2) = 2/3, class 1 2·1/(2+1) = 2/3, class 2 0 (zero_division=0)
        // -> (4/3) / 3 = 4/9.
        assert!(close(m.macro_f1, 4.0 / 9.0));
        // AUC: class 2 has no positives and is skipped; class 0: pos 0.9 | neg 0.2, 0.6 -> 1;
        // class 1: pos 0.8, 0.4 | neg 0.1 -> 1. Mean 1.
        assert!(close(m.auc, 1.0));
    }

    #[test]
    fn argmax_takes_the_first_of_tied_scores() {
        let m = classification_metrics(&[0.5, 0.5, 0.5, 0.5], 2, &[0, 1]);
        // Both predicted 0: accuracy 1/2; AUC of class 1 with all scores tied = 1/2.
        assert!(close(m.accuracy, 0.5));
        assert!(close(m.auc, 0.5));
    }

    #[test]
    fn auc_matches_pair_counting() {
        let s = [0.1f32, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
        let y = [false, false, true, true, true, false, true];
        // By hand: positives 0.35 0.8 0.4 0.2, negatives 0.1 0.4 0.9.
        // 0.35: beats 0.1 -> 1; 0.8: beats 0.1, 0.4 -> 2; 0.4: beats 0.1, ties 0.4 -> 1.5;
        // 0.2: beats 0.1 -> 1. (1 + 2 + 1.5 + 1) / 12 = 5.5/12.
        assert!(close(auc(&s, &y).unwrap(), 5.5 / 12.0));
        assert!(close(auc(&s, &y).unwrap(), auc_by_pairs(&s, &y)));
        assert!(auc(&s, &[true; 7]).is_none());
        assert!(auc(&s, &[false; 7]).is_none());
    }

    #[test]
    fn binary_auc_is_class_one_and_multiclass_is_the_ovr_mean() {
        let labels = [0i64, 1, 1, 0, 1, 0];
        let p1 = [0.3f32, 0.6, 0.3, 0.1, 0.9, 0.7];
        let probs: Vec<f32> = p1.iter().flat_map(|&p| [1.0 - p, p]).collect();
        let y: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        let m = classification_metrics(&probs, 2, &labels);
        assert!(close(m.auc, auc_by_pairs(&p1, &y)));

        // 3 classes, class 2 absent from the labels: the mean over classes 0 and 1 only.
        let probs3 = [
            0.5, 0.3, 0.2, 0.2, 0.5, 0.3, 0.4, 0.4, 0.2, 0.1, 0.6, 0.3, 0.6, 0.2, 0.2,
        ];
        let labels3 = [0i64, 1, 0, 1, 1];
        let col = |c: usize| -> Vec<f32> { probs3.chunks(3).map(|r| r[c]).collect() };
        let is = |c: i64| -> Vec<bool> { labels3.iter().map(|&l| l == c).collect() };
        let want = (auc_by_pairs(&col(0), &is(0)) + auc_by_pairs(&col(1), &is(1))) / 2.0;
        assert!(close(
            classification_metrics(&probs3, 3, &labels3).auc,
            want
        ));
        // One class only: AUC undefined.
        assert!(classification_metrics(&probs3, 3, &[1; 5]).auc.is_nan());
    }

    #[test]
    #[should_panic(expected = "outside 0..3")]
    fn a_label_out_of_range_is_a_bug() {
        classification_metrics(&[0.2, 0.3, 0.5], 3, &[3]);
    }

    #[test]
    fn segmentation_by_hand() {
        let mut c = Confusion::new(3);
        // target 0 0 1 1 ; pred 0 1 1 1 ; class 2 absent from both -> skipped.
        c.add(&[0, 1, 1, 1], &[0, 0, 1, 1]);
        let m = c.metrics();
        // IoU = TP / (|target| + |pred| − TP): class 0 1/(2+1−1) = 1/2; class 1 2/(2+3−2) = 2/3.
        assert!(close(m.miou, (0.5 + 2.0 / 3.0) / 2.0));
        assert!(close(m.miou_foreground, 2.0 / 3.0));
        // Dice 1: 2·2/(2+3) = 0.8.
        assert!(close(m.dice_foreground, 0.8));
        assert!(close(m.per_class_iou[0], 0.5) && m.per_class_iou[2].is_nan());
    }

    #[test]
    fn segmentation_accumulates_over_images_and_skips_ignored_targets() {
        let mut c = Confusion::new(3);
        // Image 1: target 0 2 255, pred 0 2 1 (the 255 pixel is ignored).
        c.add(&[0, 2, 1], &[0, 2, 255]);
        // Image 2: target 2 2 -1, pred 0 2 2 (the -1 pixel is ignored).
        c.add(&[0, 2, 2], &[2, 2, -1]);
        assert_eq!(c.ignored(), 2);
        // Totals: class 0 target 1, pred 2, TP 1 -> IoU 1/2, class 1 absent -> skipped;
        // class 2 target 3, pred 2, TP 2 -> IoU 2/3, Dice 2·2/5 = 0.8.
        let m = c.metrics();
        assert!(close(m.miou, (0.5 + 2.0 / 3.0) / 2.0));
        assert!(close(m.miou_foreground, 2.0 / 3.0));
        assert!(close(m.dice_foreground, 0.8));
        assert!(Confusion::new(2).metrics().miou.is_nan());
    }
}
