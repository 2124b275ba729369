//! Classification metrics, matching scikit-learn's definitions.
//!
//! The paper's "accuracy" is **balanced accuracy** (the official code reports torchmetrics
//! `MulticlassAccuracy(average="macro")`): the mean per-class recall. Rules for classes that are
//! missing from the data, as in scikit-learn:
//! - balanced accuracy averages the recall of the classes present in the labels;
//! - macro F1 averages the F1 of the classes present in the labels or the predictions (a class
//!   that is only predicted counts with F1 = 0);
//! - macro AUROC averages one-vs-rest AUROC over classes that have both positive and negative
//!   samples in the labels (others are skipped).

use serde::Serialize;

use crate::{Error, Result};

/// Counts of (true class, predicted class): rows are true classes, columns predictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    n: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Builds the matrix. Errors: no samples, `n_classes == 0`, different lengths, or a label or
    /// prediction `>= n_classes` (with its position).
    pub fn from_predictions(labels: &[usize], preds: &[usize], n_classes: usize) -> Result<Self> {
        if labels.len() != preds.len() {
            return Err(Error::msg(format!(
                "{} labels but {} predictions",
                labels.len(),
                preds.len()
            )));
        }
        if labels.is_empty() || n_classes == 0 {
            return Err(Error::msg("metrics: no samples or no classes"));
        }
        let mut counts = vec![0u64; n_classes * n_classes];
        for (i, (&y, &p)) in labels.iter().zip(preds).enumerate() {
            if y >= n_classes || p >= n_classes {
                return Err(Error::msg(format!(
                    "sample {i}: label {y} / prediction {p} out of range for {n_classes} classes"
                )));
            }
            counts[y * n_classes + p] += 1;
        }
        Ok(Self { n: n_classes, counts })
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n
    }

    /// Samples of class `truth` predicted as `pred` (0 for indices out of range).
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        if truth >= self.n || pred >= self.n {
            return 0;
        }
        self.counts[truth * self.n + pred]
    }

    /// The matrix as rows (true classes).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.n).map(<[u64]>::to_vec).collect()
    }

    /// Total number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Samples whose true class is `c`.
    pub fn support(&self, c: usize) -> u64 {
        (0..self.n).map(|p| self.get(c, p)).sum()
    }

    /// Samples predicted as `c`.
    pub fn predicted(&self, c: usize) -> u64 {
        (0..self.n).map(|t| self.get(t, c)).sum()
    }

    /// Fraction of samples predicted correctly.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.n).map(|c| self.get(c, c)).sum();
        correct as f64 / self.total() as f64
    }

    /// Recall of each class; `None` for a class absent from the labels.
    pub fn recall(&self) -> Vec<Option<f64>> {
        (0..self.n).map(|c| ratio(self.get(c, c), self.support(c))).collect()
    }

    /// Precision of each class; `None` for a class never predicted (scikit-learn reports 0).
    pub fn precision(&self) -> Vec<Option<f64>> {
        (0..self.n).map(|c| ratio(self.get(c, c), self.predicted(c))).collect()
    }

    /// F1 of each class, `2·TP / (2·TP + FP + FN)`; `None` for a class in neither labels nor predictions.
    pub fn f1(&self) -> Vec<Option<f64>> {
        (0..self.n)
            .map(|c| {
                let tp = self.get(c, c);
                ratio(2 * tp, self.support(c) + self.predicted(c))
            })
            .collect()
    }

    /// Balanced accuracy: mean recall over the classes present in the labels (the paper's "accuracy").
    pub fn balanced_accuracy(&self) -> f64 {
        mean_defined(&self.recall())
    }

    /// Macro F1: mean F1 over the classes present in the labels or the predictions.
    pub fn macro_f1(&self) -> f64 {
        mean_defined(&self.f1())
    }

    /// A readable table: one row per true class, one column per prediction, then the recall.
    /// Missing names fall back to class indices.
    pub fn to_text(&self, class_names: &[String]) -> String {
        let names: Vec<String> = (0..self.n)
            .map(|c| class_names.get(c).cloned().unwrap_or_else(|| c.to_string()))
            .collect();
        let corner = "true \\ pred";
        let w0 = names.iter().map(|s| s.chars().count()).chain([corner.len()]).max().unwrap_or(0);
        let widths: Vec<usize> = (0..self.n)
            .map(|c| {
                let longest =
                    (0..self.n).map(|t| self.get(t, c).to_string().len()).max().unwrap_or(1);
                names[c].chars().count().max(longest)
            })
            .collect();
        let mut out = format!("{corner:<w0$}");
        for (name, w) in names.iter().zip(&widths) {
            out += &format!("  {name:>w$}");
        }
        out += "  recall\n";
        let recall = self.recall();
        for (t, name) in names.iter().enumerate() {
            out += &format!("{name:<w0$}");
            for (p, w) in widths.iter().enumerate() {
                out += &format!("  {:>w$}", self.get(t, p));
            }
            match recall[t] {
                Some(r) => out += &format!("  {:>6.2}%\n", 100.0 * r),
                None => out += "       -\n",
            }
        }
        out
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn mean_defined(values: &[Option<f64>]) -> f64 {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    defined.iter().sum::<f64>() / defined.len() as f64
}

/// Index of the largest value of each row (the first one on ties; NaN never wins).
pub fn argmax_rows(probs: &[Vec<f32>]) -> Vec<usize> {
    probs
        .iter()
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Area under the ROC curve of `scores` for the `positive` samples: the Mann-Whitney statistic,
/// with tied scores given their average rank. `None` without both positives and negatives.
pub fn binary_auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len().checked_sub(n_pos)?;
    if n_pos == 0 || n_neg == 0 || scores.len() != positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0; // ranks are 1-based
        rank_sum_pos += avg_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// Macro one-vs-rest AUROC of class probabilities (`probs[i][c]`), skipping classes without both
/// positive and negative samples; `Ok(None)` if no class qualifies (e.g. one class only).
/// Errors: length mismatch, ragged rows, a label out of range, a NaN score.
pub fn macro_auroc(probs: &[Vec<f32>], labels: &[usize]) -> Result<Option<f64>> {
    if probs.len() != labels.len() {
        return Err(Error::msg(format!(
            "{} probability rows but {} labels",
            probs.len(),
            labels.len()
        )));
    }
    let n_classes = probs.first().map_or(0, Vec::len);
    for (i, (row, &y)) in probs.iter().zip(labels).enumerate() {
        if row.len() != n_classes || y >= n_classes || row.iter().any(|v| v.is_nan()) {
            return Err(Error::msg(format!(
                "sample {i}: {} scores (expected {n_classes}), label {y}, or a NaN score",
                row.len()
            )));
        }
    }
    let aucs: Vec<f64> = (0..n_classes)
        .filter_map(|c| {
            let scores: Vec<f32> = probs.iter().map(|r| r[c]).collect();
            let positive: Vec<bool> = labels.iter().map(|&y| y == c).collect();
            binary_auroc(&scores, &positive)
        })
        .collect();
    Ok((!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64))
}

/// Per-class figures in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// Class name.
    pub name: String,
    /// Samples of this class in the labels.
    pub support: u64,
    /// `None` (JSON null) if never predicted.
    pub precision: Option<f64>,
    /// `None` if absent from the labels.
    pub recall: Option<f64>,
    /// `None` if in neither labels nor predictions.
    pub f1: Option<f64>,
}

/// An evaluation summary, serialisable to JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Number of samples.
    pub n_samples: u64,
    /// Plain accuracy.
    pub accuracy: f64,
    /// Balanced accuracy (the paper's "accuracy").
    pub balanced_accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// Macro one-vs-rest AUROC, when probabilities were given and it is defined.
    pub macro_auroc: Option<f64>,
    /// Per-class figures, in class order.
    pub classes: Vec<ClassReport>,
    /// Confusion matrix rows (true class) by columns (prediction).
    pub confusion: Vec<Vec<u64>>,
}

impl Report {
    /// Summarises predictions; `class_names.len()` is the number of classes. With `probs`, also
    /// the macro AUROC.
    pub fn new(
        labels: &[usize],
        preds: &[usize],
        class_names: &[String],
        probs: Option<&[Vec<f32>]>,
    ) -> Result<Self> {
        let cm = ConfusionMatrix::from_predictions(labels, preds, class_names.len())?;
        let macro_auroc = match probs {
            Some(p) => macro_auroc(p, labels)?,
            None => None,
        };
        let (precision, recall, f1) = (cm.precision(), cm.recall(), cm.f1());
        let classes = class_names
            .iter()
            .enumerate()
            .map(|(c, name)| ClassReport {
                name: name.clone(),
                support: cm.support(c),
                precision: precision[c],
                recall: recall[c],
                f1: f1[c],
            })
            .collect();
        Ok(Self {
            n_samples: cm.total(),
            accuracy: cm.accuracy(),
            balanced_accuracy: cm.balanced_accuracy(),
            macro_f1: cm.macro_f1(),
            macro_auroc,
            classes,
            confusion: cm.rows(),
        })
    }

    /// Summarises class probabilities: predictions are the row-wise argmax.
    pub fn from_probs(
        probs: &[Vec<f32>],
        labels: &[usize],
        class_names: &[String],
    ) -> Result<Self> {
        Self::new(labels, &argmax_rows(probs), class_names, Some(probs))
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers, strings and options cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
