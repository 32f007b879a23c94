//! Metrics on plain data (no tensors): classification (accuracy — the paper's number —,
//! balanced accuracy, macro-F1, one-vs-rest AUC) and segmentation (mIoU over all classes
//! including background — the paper's number —, foreground mIoU, foreground Dice).
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    /// Mean recall over the classes present in the labels.
    pub balanced_accuracy: f64,
    /// Mean F1 over all classes; a class never predicted and never present counts 0
    /// (scikit-learn's `zero_division=0`).
    pub macro_f1: f64,
    /// One-vs-rest macro AUC over classes with both positives and negatives (binary: class
    /// 1's AUC); NaN when no class qualifies.
    pub auc: f64,
}

/// AUC of `scores` for `positive` (Mann–Whitney U with averaged ranks for ties).
pub fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
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
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let sum_pos: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(r, _)| r)
        .sum();
    Some((sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64)
}

/// `probs`: row-major `[n, classes]` probabilities; `labels`: `n` class indices.
pub fn classification_metrics(
    probs: &[f32],
    classes: usize,
    labels: &[i64],
) -> ClassificationMetrics {
    let n = labels.len();
    assert_eq!(
        probs.len(),
        n * classes,
        "probabilities do not match labels"
    );
    let pred: Vec<usize> = probs
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect();
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
        / present.len().max(1) as f64;
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
    let aucs: Vec<f64> = if classes == 2 {
        let s: Vec<f32> = probs.chunks(2).map(|r| r[1]).collect();
        auc(&s, &labels.iter().map(|&y| y == 1).collect::<Vec<_>>())
            .into_iter()
            .collect()
    } else {
        (0..classes)
            .filter_map(|c| {
                let s: Vec<f32> = probs.chunks(classes).map(|r| r[c]).collect();
                auc(
                    &s,
                    &labels.iter().map(|&y| y as usize == c).collect::<Vec<_>>(),
                )
            })
            .collect()
    };
    ClassificationMetrics {
        accuracy: correct as f64 / n.max(1) as f64,
        balanced_accuracy: balanced,
        macro_f1: f1,
        auc: if aucs.is_empty() {
            f64::NAN
        } else {
            aucs.iter().sum::<f64>() / aucs.len() as f64
        },
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentationMetrics {
    /// Mean IoU over every class that occurs in the predictions or the targets, background
    /// included (the paper's mIoU).
    pub miou: f64,
    /// The same over the foreground classes (1..).
    pub miou_foreground: f64,
    /// Mean Dice over the foreground classes that occur.
    pub dice_foreground: f64,
    pub per_class_iou: Vec<f64>,
}

/// A confusion matrix accumulated over a whole evaluation set (pixels).
#[derive(Debug, Clone)]
pub struct Confusion {
    n: usize,
    m: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            n: classes,
            m: vec![0; classes * classes],
        }
    }

    /// Adds predicted and target class maps of the same length; out-of-range targets are
    /// ignored.
    pub fn add(&mut self, pred: &[i64], target: &[i64]) {
        for (&p, &t) in pred.iter().zip(target) {
            if (0..self.n as i64).contains(&t) && (0..self.n as i64).contains(&p) {
                self.m[t as usize * self.n + p as usize] += 1;
            }
        }
    }

    pub fn metrics(&self) -> SegmentationMetrics {
        let n = self.n;
        let row = |c: usize| (0..n).map(|p| self.m[c * n + p]).sum::<u64>();
        let col = |c: usize| (0..n).map(|t| self.m[t * n + c]).sum::<u64>();
        let iou: Vec<Option<f64>> = (0..n)
            .map(|c| {
                let tp = self.m[c * n + c];
                let union = row(c) + col(c) - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect();
        let dice: Vec<Option<f64>> = (0..n)
            .map(|c| {
                let denom = row(c) + col(c);
                (denom > 0).then(|| 2.0 * self.m[c * n + c] as f64 / denom as f64)
            })
            .collect();
        let mean = |v: &[Option<f64>]| {
            let xs: Vec<f64> = v.iter().flatten().copied().collect();
            if xs.is_empty() {
                f64::NAN
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        SegmentationMetrics {
            miou: mean(&iou),
            miou_foreground: mean(&iou[1.min(n)..]),
            dice_foreground: mean(&dice[1.min(n)..]),
            per_class_iou: iou.iter().map(|x| x.unwrap_or(f64::NAN)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_hand() {
        // labels 0 0 1 2, predictions (argmax) 0 1 1 1.
        let probs = [0.8, 0.1, 0.1, 0.3, 0.6, 0.1, 0.2, 0.7, 0.1, 0.2, 0.5, 0.3];
        let m = classification_metrics(&probs, 3, &[0, 0, 1, 2]);
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        // Recalls: class 0 1/2, class 1 1/1, class 2 0/1 -> 0.5.
        assert!((m.balanced_accuracy - 0.5).abs() < 1e-12);
        // F1: class 0 2*1/(2+1) = 2/3, class 1 2*1/(1+3) = 1/2, class 2 0 -> 7/18.
        assert!((m.macro_f1 - 7.0 / 18.0).abs() < 1e-12);
    }

    #[test]
    fn auc_matches_pair_counting() {
        let s = [0.1f32, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
        let y = [false, false, true, true, true, false, true];
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
        assert!((auc(&s, &y).unwrap() - wins / pairs).abs() < 1e-12);
        assert!(auc(&s, &[true; 7]).is_none());
    }

    #[test]
    fn segmentation_by_hand() {
        let mut c = Confusion::new(3);
        // target 0 0 1 1 ; pred 0 1 1 1 ; class 2 absent from both -> skipped.
        c.add(&[0, 1, 1, 1], &[0, 0, 1, 1]);
        let m = c.metrics();
        // IoU 0: 1/(2+1-1) = 1/2; IoU 1: 2/(2+3-2) = 2/3.
        assert!((m.miou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.miou_foreground - 2.0 / 3.0).abs() < 1e-12);
        // Dice 1: 2*2/(2+3) = 0.8.
        assert!((m.dice_foreground - 0.8).abs() < 1e-12);
    }
}
