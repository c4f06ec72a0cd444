//! The charts of runs, drawn with [`crate::chart`]: a run's learning curve (loss, accuracy and
//! learning-rate panels), several runs or folds overlaid, a confusion matrix. `train` and `cv`
//! write them as PNG; `serve` sends the same SVG to its page.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`,
//! `chart`); never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::chart::{self, Panel, Series};
use crate::train::fit::EpochRecord;
use anyhow::Result;
use std::path::Path;

/// The size of one panel, in SVG units (= PNG pixels).
pub const PANEL_W: f64 = 420.0;
pub const PANEL_H: f64 = 320.0;

/// The last epoch marked best (the weights kept), if any.
pub fn best_epoch(history: &[EpochRecord]) -> Option<usize> {
    history.iter().rev().find(|r| r.best).map(|r| r.epoch)
}

fn pct(v: f64) -> f64 {
    100.0 * v
}

/// A run's learning curve: loss (train, validation), accuracy (train, validation WA, UA,
/// macro-F1, in %) and learning rate (log axis) per epoch, the best epoch marked. Panel ids:
/// `chart-loss`, `chart-acc`, `chart-lr`.
pub fn learning_curve_svg(history: &[EpochRecord]) -> String {
    let best = best_epoch(history).map(|e| e as f64);
    let s = |name: &str, k: usize, f: fn(&EpochRecord) -> f64| {
        Series::new(
            name,
            k,
            history.iter().map(|r| (r.epoch as f64, f(r))).collect(),
        )
    };
    let panel = |id: &str, title: &str, y: &str, series: Vec<Series>| Panel {
        id: id.into(),
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y.into(),
        series,
        best_x: best,
        x_whole: true,
        ..Default::default()
    };
    let mut lr = panel("chart-lr", "learning rate", "", vec![s("lr", 0, |r| r.lr)]);
    lr.y_log = true;
    chart::figure(
        &[
            panel(
                "chart-loss",
                "loss",
                "cross-entropy",
                vec![
                    s("train", 0, |r| r.train_loss),
                    s("validation", 1, |r| r.val_loss),
                ],
            ),
            panel(
                "chart-acc",
                "accuracy and F1",
                "%",
                vec![
                    s("train acc", 0, |r| pct(r.train_accuracy)),
                    s("val WA", 1, |r| pct(r.val_accuracy)),
                    s("val UA", 2, |r| pct(r.val_unweighted_accuracy)),
                    s("val macro-F1", 3, |r| pct(r.val_macro_f1)),
                ],
            ),
            lr,
        ],
        PANEL_W,
        PANEL_H,
    )
}

/// Several runs (or a cv's folds) overlaid: validation loss, WA and macro-F1 per epoch, each
/// run's best epoch marked in its colour. Panel ids: `cmp-loss`, `cmp-wa`, `cmp-f1`.
pub fn compare_svg(runs: &[(String, &[EpochRecord])]) -> String {
    let panel = |id: &str, title: &str, y: &str, f: fn(&EpochRecord) -> f64| Panel {
        id: id.into(),
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y.into(),
        series: runs
            .iter()
            .enumerate()
            .map(|(k, (name, h))| Series {
                best_x: best_epoch(h).map(|e| e as f64),
                ..Series::new(name, k, h.iter().map(|r| (r.epoch as f64, f(r))).collect())
            })
            .collect(),
        x_whole: true,
        ..Default::default()
    };
    chart::figure(
        &[
            panel("cmp-loss", "validation loss", "cross-entropy", |r| {
                r.val_loss
            }),
            panel("cmp-wa", "validation WA", "%", |r| pct(r.val_accuracy)),
            panel(
                "cmp-f1",
                "validation macro-F1",
                "%",
                |r| pct(r.val_macro_f1),
            ),
        ],
        PANEL_W,
        PANEL_H,
    )
}

/// RUN_DIR/learning_curve.png: [`learning_curve_svg`] as PNG.
pub fn learning_curve_png(path: &Path, history: &[EpochRecord]) -> Result<()> {
    chart::save_png(path, &learning_curve_svg(history))
}

/// A confusion-matrix heat map as PNG (`-`: standard output).
pub fn confusion_png(
    path: &Path,
    counts: &[Vec<u64>],
    labels: &[String],
    title: &str,
) -> Result<()> {
    chart::save_png(path, &chart::confusion(counts, labels, title))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, val_accuracy: f64, best: bool) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 1e-3 / epoch as f64,
            train_loss: 1.6 - 0.1 * epoch as f64,
            train_accuracy: 0.2 + 0.05 * epoch as f64,
            val_loss: 1.5 - 0.05 * epoch as f64,
            val_accuracy,
            val_micro_f1: val_accuracy,
            val_macro_f1: val_accuracy - 0.05,
            val_unweighted_accuracy: val_accuracy - 0.02,
            best,
            val_confusion: None,
        }
    }

    #[test]
    fn the_learning_curve_has_three_panels_and_the_best_epoch() {
        let h: Vec<EpochRecord> = (1..=10)
            .map(|e| rec(e, 0.3 + 0.05 * e as f64, e == 7))
            .collect();
        let svg = learning_curve_svg(&h);
        for id in ["chart-loss", "chart-acc", "chart-lr"] {
            assert!(svg.contains(&format!(r#"<g id="{id}""#)), "{id}");
        }
        assert_eq!(svg.matches(r#"data-series="val WA""#).count(), 10);
        assert_eq!(svg.matches(r#"data-series="validation""#).count(), 10);
        // The best epoch on each panel.
        assert_eq!(svg.matches(">best 7</text>").count(), 3);
        // Accuracy in %: WA 35..80, UA 33..78, F1 30..75, train 25..70 → an axis 20..80.
        assert!(svg.contains(r#"class="tick-y">20</text>"#), "{svg}");
        assert!(svg.contains(r#"class="tick-y">80</text>"#));
        // The lr falls from 1e-3 to 1e-4.
        assert!(svg.contains(r#"class="tick-y">1e-4</text>"#));
        assert!(svg.contains(r#"class="tick-y">0.001</text>"#));
        assert!(!svg.contains("NaN"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lc.png");
        learning_curve_png(&p, &h).unwrap();
        let dec = ::png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let info = dec.read_info().unwrap().info().clone();
        assert_eq!(
            (info.width, info.height),
            (3 * PANEL_W as u32, PANEL_H as u32)
        );
    }

    #[test]
    fn compare_overlays_every_run() {
        let a: Vec<EpochRecord> = (1..=3).map(|e| rec(e, 0.5, false)).collect();
        let b: Vec<EpochRecord> = (1..=5).map(|e| rec(e, 0.6, e == 5)).collect();
        let svg = compare_svg(&[("fold 1".into(), &a), ("fold 2".into(), &b)]);
        assert_eq!(svg.matches(r#"class="pt" data-series="fold 1""#).count(), 9);
        assert_eq!(
            svg.matches(r#"class="pt" data-series="fold 2""#).count(),
            15
        );
        for id in ["cmp-loss", "cmp-wa", "cmp-f1"] {
            assert!(svg.contains(&format!(r#"<g id="{id}""#)), "{id}");
        }
        // Only fold 2 has a best epoch (5): a dashed line and a ring on each panel.
        assert_eq!(
            svg.matches(r#"class="best" data-series="fold 2""#).count(),
            3
        );
        assert_eq!(
            svg.matches(r#"class="best-pt" data-series="fold 2""#)
                .count(),
            3
        );
        assert!(!svg.contains(r#"data-series="fold 1" stroke-dasharray"#));
        assert!(!svg.contains(r#"class="best-pt" data-series="fold 1""#));
    }
}
