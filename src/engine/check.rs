//! Device-vs-CPU comparison of the whole model (`ser-engine gradcheck --device sim|cuda`): one
//! training forward + backward of a small model on the device and on the CPU reference in f64
//! (same f32 parameters, input, dropout masks), reported per tensor as the relative-norm error
//! ‖device − cpu‖ / ‖cpu‖ of logits, loss and every parameter gradient.
//!
//! Tolerances: 1e-5 for logits and loss (sums of a few hundred f32 products), 1e-4 for
//! gradients (longer sums, BatchNorm's cancelling terms). Two gradients are ~0 by construction,
//! so their relative error would measure rounding noise against zero: conv biases followed by
//! BatchNorm (BN subtracts the mean over exactly the positions the bias was added to) and
//! attention.bias (Σ_t g_t(1−e_t²) with Σ_t g_t = 0). For those the error is
//! ‖device − cpu‖ / max over tensors of ‖cpu gradient‖, at 1e-5.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.

use anyhow::Result;

use crate::cpu::gradcheck::small_config;
use crate::cpu::{cross_entropy, CpuModel, Input, Mode};
use crate::device::Device;
use crate::engine::rnn::LossConfig;
use crate::engine::step::DeviceModel;
use crate::model::ParamLayout;
use crate::rng::{Purpose, Stream};

/// One line of the report.
#[derive(Clone, Debug)]
pub struct CheckRow {
    pub what: String,
    pub elements: usize,
    pub err: f64,
    pub tol: f64,
    /// The error is scaled by the largest gradient norm (a gradient that is ~0 by construction).
    pub scaled: bool,
    pub ok: bool,
}

/// ‖a − b‖ / ‖b‖ (‖a − b‖ when b is 0); NaN anywhere gives NaN.
fn rel(a: &[f32], b: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d = *x as f64 - y;
        num += d * d;
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn row(what: String, elements: usize, err: f64, tol: f64, scaled: bool) -> CheckRow {
    CheckRow {
        what,
        elements,
        err,
        tol,
        scaled,
        // NaN fails
        ok: err <= tol,
    }
}

/// Runs the comparison for the small gradcheck model (with and without BatchNorm) on `dev`.
pub fn device_vs_cpu(dev: Device) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    let mut dev = Some(dev);
    for bn in [true, false] {
        let cfg = small_config(bn);
        let (t_max, lens, labels) = (32usize, [32usize, 27, 18], [2usize, 0, 1]);
        let s = Stream::new(5, Purpose::Test, 1);
        let mut x = vec![0.0f32; lens.len() * cfg.n_mels * t_max];
        for (b, &l) in lens.iter().enumerate() {
            for m in 0..cfg.n_mels {
                for t in 0..l {
                    let i = (b * cfg.n_mels + m) * t_max + t;
                    x[i] = s.normal(i as u64);
                }
            }
        }
        let tag = if bn { "bn" } else { "no-bn" };
        let mut dm = DeviceModel::new(dev.take().expect("device returned below"), &cfg, 5)?;
        let mut cpu = CpuModel::<f64>::new(cfg.clone(), 5);
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let inp = Input {
            x: &xd,
            batch: lens.len(),
            t_max,
            lengths: &lens,
        };
        let mode = Mode::Train { seed: 3, step: 2 };
        // Train-mode logits first (a training forward on both sides: the running statistics
        // see the same two updates, and train-mode outputs use batch statistics).
        let logits_train = dm.forward(&x, &lens, t_max, mode)?;
        let fwd_train = cpu.forward(&inp, mode);
        let loss_cfg = LossConfig::default();
        let out = dm.compute_grads(&x, &lens, t_max, &labels, 3, 2, &loss_cfg)?;
        let fwd = cpu.forward(&inp, mode);
        let (l, dlogits, _) = cross_entropy(&fwd.logits, &labels, cfg.classes, None, 0.0);
        cpu.backward(&fwd, &dlogits);
        rows.push(row(
            format!("{tag} logits (train, dropout)"),
            fwd.logits.len(),
            rel(&logits_train, &fwd_train.logits),
            1e-5,
            false,
        ));
        rows.push(row(
            format!("{tag} loss"),
            1,
            ((out.loss as f64 - l) / l).abs(),
            1e-5,
            false,
        ));
        let g = dm.grads_host()?;
        let layout = ParamLayout::new(&cfg);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let gmax = layout
            .entries
            .iter()
            .map(|e| norm(&cpu.grads[e.offset..e.offset + e.len]))
            .fold(0.0, f64::max);
        for e in &layout.entries {
            let r = e.offset..e.offset + e.len;
            let (got, want) = (&g[r.clone()], &cpu.grads[r]);
            let zero_by_construction =
                (bn && e.name.starts_with("conv") && e.name.ends_with(".bias"))
                    || e.name == "attention.bias";
            let (err, tol) = if zero_by_construction {
                let d: Vec<f64> = got.iter().zip(want).map(|(a, b)| *a as f64 - b).collect();
                (norm(&d) / gmax, 1e-5)
            } else {
                (rel(got, want), 1e-4)
            };
            rows.push(row(
                format!("{tag} grad {}", e.name),
                e.len,
                err,
                tol,
                zero_by_construction,
            ));
        }
        let ev = dm.forward(&x, &lens, t_max, Mode::Eval)?;
        let want = cpu.forward(&inp, Mode::Eval).logits;
        rows.push(row(
            format!("{tag} logits (eval)"),
            want.len(),
            rel(&ev, &want),
            1e-5,
            false,
        ));
        dev = Some(dm.dev);
    }
    Ok(rows)
}

/// The rows as a table.
pub fn format_table(rows: &[CheckRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:>8} {:>12} {:>8}  result",
        "device vs cpu (f64)", "elements", "error", "tol"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<44} {:>8} {:>12.3e} {:>8.0e}  {}{}",
            r.what,
            r.elements,
            r.err,
            r.tol,
            if r.ok { "ok" } else { "FAIL" },
            if r.scaled { " (*)" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "error = ‖device − cpu‖/‖cpu‖; (*) ‖device − cpu‖/max‖cpu grad‖ for gradients that are \
         ~0 by construction (conv bias before BatchNorm, attention.bias)"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fail_on_nan_and_on_large_errors() {
        assert!((rel(&[3.0, 4.0], &[3.0, 4.0])).abs() == 0.0);
        // ‖(0, 0.5)‖ / ‖(3, 4)‖ = 0.1
        assert!((rel(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert!(
            !row(
                "x".into(),
                2,
                rel(&[f32::NAN, 4.0], &[3.0, 4.0]),
                1e-4,
                false
            )
            .ok
        );
        assert!(!row("x".into(), 2, 2e-4, 1e-4, false).ok);
        assert!(row("x".into(), 2, 1e-5, 1e-4, false).ok);
        assert!(format_table(&[row("x".into(), 2, 2e-4, 1e-4, true)]).contains("FAIL (*)"));
    }
}
