//! Learning-rate schedules (reduce-on-plateau per epoch, or warmup + cosine per step) and
//! early stopping on validation loss.
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use serde::{Deserialize, Serialize};

/// How the learning rate moves during a run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The paper's: constant, halved by reduce-on-plateau when validation loss stalls.
    #[default]
    Plateau,
    /// Linear warmup over the first epoch, then half a cosine down to zero at the last step
    /// of the last epoch; for short runs with a fixed epoch budget.
    Cosine,
}

/// The learning rate of training step `step` (0-based) of `total` steps under
/// [`Schedule::Cosine`]: `peak·(step+1)/warmup` during the first `warmup` steps, then
/// `peak·½(1 + cos(π·(step−warmup)/(total−warmup)))`. Steps past `total` (a run extended by
/// `--resume --epochs`) get the last value, never a negative one.
pub fn cosine_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let x = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
}

/// torch.optim.lr_scheduler.ReduceLROnPlateau(mode='min', threshold=1e-4,
/// threshold_mode='rel', cooldown=0): after `patience` epochs without a relative improvement
/// the learning rate is multiplied by `factor` (not below `min_lr`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReduceOnPlateau {
    pub factor: f64,
    pub patience: usize,
    pub threshold: f64,
    pub min_lr: f64,
    pub best: f64,
    pub bad_epochs: usize,
}

impl ReduceOnPlateau {
    pub fn new(factor: f64, patience: usize) -> Self {
        Self {
            factor,
            patience,
            threshold: 1e-4,
            min_lr: 0.0,
            best: f64::INFINITY,
            bad_epochs: 0,
        }
    }

    /// Feeds one epoch's metric; returns the new learning rate.
    pub fn step(&mut self, metric: f64, lr: f64) -> f64 {
        if metric < self.best * (1.0 - self.threshold) {
            self.best = metric;
            self.bad_epochs = 0;
            lr
        } else {
            self.bad_epochs += 1;
            if self.bad_epochs > self.patience {
                self.bad_epochs = 0;
                (lr * self.factor).max(self.min_lr)
            } else {
                lr
            }
        }
    }
}

/// Stops after `patience` epochs without a new best validation loss.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub best: f64,
    pub best_epoch: usize,
    pub since_best: usize,
}

impl EarlyStopping {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: f64::INFINITY,
            best_epoch: 0,
            since_best: 0,
        }
    }

    /// Returns true when this epoch is a new best.
    pub fn observe(&mut self, epoch: usize, loss: f64) -> bool {
        if loss < self.best {
            self.best = loss;
            self.best_epoch = epoch;
            self.since_best = 0;
            true
        } else {
            self.since_best += 1;
            false
        }
    }

    pub fn should_stop(&self) -> bool {
        self.since_best >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_halves_after_patience_like_torch() {
        // torch with patience 2: reduction on the 3rd bad epoch, counter then restarts.
        let mut s = ReduceOnPlateau::new(0.5, 2);
        let mut lr = 1.0;
        let losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95];
        let mut lrs = vec![];
        for l in losses {
            lr = s.step(l, lr);
            lrs.push(lr);
        }
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        let (peak, warm, total) = (2e-3, 10, 110);
        // warmup is linear and reaches the peak on its last step
        assert!((cosine_lr(peak, 0, warm, total) - 2e-4).abs() < 1e-15);
        assert!((cosine_lr(peak, 9, warm, total) - peak).abs() < 1e-15);
        assert!((cosine_lr(peak, 10, warm, total) - peak).abs() < 1e-15);
        // halfway through the decay: half the peak; at the end: zero; past the end: stays 0
        assert!((cosine_lr(peak, 60, warm, total) - peak / 2.0).abs() < 1e-15);
        assert!(cosine_lr(peak, 110, warm, total).abs() < 1e-15);
        assert!(cosine_lr(peak, 500, warm, total).abs() < 1e-15);
        // monotone after warmup
        let lrs: Vec<f64> = (10..=110)
            .map(|s| cosine_lr(peak, s, warm, total))
            .collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn early_stopping_counts_from_best() {
        let mut e = EarlyStopping::new(2);
        assert!(e.observe(0, 1.0));
        assert!(!e.observe(1, 1.0));
        assert!(!e.should_stop());
        assert!(!e.observe(2, 1.1));
        assert!(e.should_stop());
        assert_eq!(e.best_epoch, 0);
    }
}
