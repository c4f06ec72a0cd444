//! Classification metrics from a confusion matrix: accuracy (weighted accuracy, WA), micro-F1
//! and macro-F1 as the paper reports them, and unweighted accuracy (UA, the mean of per-class
//! recalls) as EmoBox and most SER papers report it.
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use serde::{Deserialize, Serialize};

/// Confusion matrix: `counts[true][predicted]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<Vec<u64>>,
}

/// Summary scores of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Correct / total (WA).
    pub accuracy: f64,
    /// Mean recall over the classes present in the truth (UA); older files lack it.
    #[serde(default)]
    pub unweighted_accuracy: f64,
    pub micro_f1: f64,
    pub macro_f1: f64,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![vec![0; classes]; classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    /// Adds another matrix of the same size (e.g. summing folds).
    pub fn merge(&mut self, other: &Confusion) {
        for (row, orow) in self.counts.iter_mut().zip(&other.counts) {
            for (c, o) in row.iter_mut().zip(orow) {
                *c += o;
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Per-class F1; a class that is neither present nor predicted gets F1 = 0 and is left out
    /// of the macro mean (as scikit-learn does with `labels` restricted to present classes).
    pub fn per_class_f1(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let support: u64 = self.counts[c].iter().sum();
                let predicted: u64 = self.counts.iter().map(|r| r[c]).sum();
                if support == 0 && predicted == 0 {
                    return None;
                }
                let denom = support as f64 + predicted as f64;
                Some(if denom == 0.0 { 0.0 } else { 2.0 * tp / denom })
            })
            .collect()
    }

    /// Per-class recall (correct / support); `None` for a class absent from the truth.
    pub fn per_class_recall(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let support: u64 = self.counts[c].iter().sum();
                (support > 0).then(|| self.counts[c][c] as f64 / support as f64)
            })
            .collect()
    }

    /// Per-class precision (correct / predicted); `None` for a class never predicted.
    pub fn per_class_precision(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let predicted: u64 = self.counts.iter().map(|r| r[c]).sum();
                (predicted > 0).then(|| self.counts[c][c] as f64 / predicted as f64)
            })
            .collect()
    }

    /// Precision, recall, F1 and support of every class (scikit-learn's
    /// `classification_report`, with `None` where sklearn would warn and print 0).
    pub fn per_class(&self, labels: &[String]) -> Vec<ClassScores> {
        let (p, r, f) = (
            self.per_class_precision(),
            self.per_class_recall(),
            self.per_class_f1(),
        );
        (0..self.classes)
            .map(|c| ClassScores {
                label: labels.get(c).cloned().unwrap_or_else(|| c.to_string()),
                precision: p[c],
                recall: r[c],
                f1: f[c],
                support: self.counts[c].iter().sum(),
            })
            .collect()
    }

    pub fn scores(&self) -> Scores {
        let total = self.total() as f64;
        let correct: u64 = (0..self.classes).map(|c| self.counts[c][c]).sum();
        let accuracy = if total > 0.0 {
            correct as f64 / total
        } else {
            0.0
        };
        // Single-label multi-class: micro precision = micro recall = accuracy, so micro-F1 too.
        let f1s: Vec<f64> = self.per_class_f1().into_iter().flatten().collect();
        let macro_f1 = if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        };
        let recalls: Vec<f64> = self.per_class_recall().into_iter().flatten().collect();
        let unweighted_accuracy = if recalls.is_empty() {
            0.0
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        };
        Scores {
            accuracy,
            unweighted_accuracy,
            micro_f1: accuracy,
            macro_f1,
        }
    }

    /// A fixed-width text table with class names, for terminals.
    pub fn to_table(&self, labels: &[String]) -> String {
        let w = labels.iter().map(|l| l.len()).max().unwrap_or(4).max(6);
        let mut s = format!("{:>w$} | predicted\n", "true");
        s += &format!("{:>w$} |", "");
        for l in labels {
            s += &format!(" {:>w$}", l);
        }
        s.push('\n');
        for (i, row) in self.counts.iter().enumerate() {
            s += &format!("{:>w$} |", labels.get(i).map(String::as_str).unwrap_or("?"));
            for c in row {
                s += &format!(" {:>w$}", c);
            }
            s.push('\n');
        }
        s
    }
}

/// One row of the per-class report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Clips of this class in the truth.
    pub support: u64,
}

/// The per-class rows as a fixed-width text table (`-` where a value is undefined).
pub fn per_class_table(rows: &[ClassScores]) -> String {
    let w = rows.iter().map(|r| r.label.len()).max().unwrap_or(5).max(5);
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let mut s = format!(
        "{:<w$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
        "class", "precision", "recall", "F1", "support"
    );
    for r in rows {
        s += &format!(
            "{:<w$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            r.label,
            pct(r.precision),
            pct(r.recall),
            pct(r.f1),
            r.support
        );
    }
    s
}

/// Mean and sample standard deviation (n - 1); std is 0 for one value.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed example: 3 classes, truths/predictions chosen so every F1 differs.
    #[test]
    fn scores_match_hand_computation() {
        let mut c = Confusion::new(3);
        // class 0: 3 samples, 2 right, 1 predicted as 1
        c.add(0, 0);
        c.add(0, 0);
        c.add(0, 1);
        // class 1: 2 samples, 1 right, 1 predicted as 2
        c.add(1, 1);
        c.add(1, 2);
        // class 2: 1 sample, right
        c.add(2, 2);
        let s = c.scores();
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!(s.micro_f1, s.accuracy);
        // F1_0 = 2*2/(3+2) = 0.8; F1_1 = 2*1/(2+2) = 0.5; F1_2 = 2*1/(1+2) = 2/3.
        let expected = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((s.macro_f1 - expected).abs() < 1e-15, "{}", s.macro_f1);
        // recalls 2/3, 1/2, 1/1
        let ua = (2.0 / 3.0 + 0.5 + 1.0) / 3.0;
        assert!(
            (s.unweighted_accuracy - ua).abs() < 1e-15,
            "{}",
            s.unweighted_accuracy
        );
    }

    #[test]
    fn ua_ignores_absent_classes_and_differs_from_wa_when_imbalanced() {
        let mut c = Confusion::new(3);
        for _ in 0..9 {
            c.add(0, 0);
        }
        c.add(1, 0);
        let s = c.scores();
        assert_eq!(s.accuracy, 0.9);
        assert_eq!(s.unweighted_accuracy, 0.5); // (1 + 0) / 2; class 2 has no support
        assert_eq!(c.per_class_recall(), vec![Some(1.0), Some(0.0), None]);
    }

    #[test]
    fn per_class_report_matches_hand_computation() {
        let mut c = Confusion::new(3);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)] {
            c.add(t, p);
        }
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let rows = c.per_class(&labels);
        // predicted counts: a 2 (2 right), b 2 (1 right), c 2 (1 right)
        assert_eq!(rows[0].precision, Some(1.0));
        assert_eq!(rows[1].precision, Some(0.5));
        assert_eq!(rows[2].precision, Some(0.5));
        assert_eq!(rows[0].recall, Some(2.0 / 3.0));
        assert_eq!(rows[2].recall, Some(1.0));
        assert_eq!(rows[1].f1, Some(0.5));
        assert_eq!(
            rows.iter().map(|r| r.support).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        let table = per_class_table(&rows);
        assert!(table.contains("66.67%"), "{table}");
        let mut never = Confusion::new(2);
        never.add(0, 0);
        assert_eq!(never.per_class_precision(), vec![Some(1.0), None]);
        assert!(per_class_table(&never.per_class(&labels[..2])).contains('-'));
    }

    #[test]
    fn absent_class_is_left_out_of_macro() {
        let mut c = Confusion::new(3);
        c.add(0, 0);
        c.add(1, 1);
        assert_eq!(c.per_class_f1()[2], None);
        assert_eq!(c.scores().macro_f1, 1.0);
    }

    #[test]
    fn mean_std_sample() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }
}
