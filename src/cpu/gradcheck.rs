//! Gradient checks of the CPU reference: central finite differences in f64 against the
//! analytic backward of every op and of the whole model.
//!
//! Each check reduces the op's output to a scalar L = Σ r ⊙ y with fixed random weights r (or
//! uses the loss itself), perturbs every input and parameter element by ±h (h = 1e-5) and
//! compares (L(+h) − L(−h)) / 2h with the analytic gradient. The error of one element is
//!   |num − ana| / max(|num| + |ana|, 1e-3 · max_j |ana_j|),
//! i.e. relative, with a floor at a thousandth of the largest gradient entry so that entries
//! that are zero or tiny (where f64 rounding of L, ≈ 1e-16·|L|/h ≈ 1e-11, dominates) do not
//! count as failures. The row's error is the maximum over all elements; it passes at ≤ 1e-6.
//! (Truncation error of the central difference is O(h²) ≈ 1e-10 relative here.)
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::attention::{attention_backward, attention_forward};
use super::batchnorm::{bn_backward, bn_train_forward};
use super::conv::{conv2d_backward, conv2d_forward, ConvShape};
use super::dropout::{apply_mask, dropout_mask};
use super::linear::{linear_backward, linear_forward};
use super::lstm::{dir_len, lstm_layer_backward, lstm_layer_forward, LstmShape};
use super::pool::{maxpool2_backward, maxpool2_forward, relu_backward, relu_forward};
use super::{cross_entropy, CpuModel, Input, Mode};
use crate::model::ModelConfig;
use crate::rng::{Purpose, Stream};

/// Finite-difference step.
pub const H: f64 = 1e-5;
/// Pass threshold of the error defined in the module doc.
pub const TOL: f64 = 1e-6;

/// One line of the report.
#[derive(Clone, Debug)]
pub struct GradcheckRow {
    pub op: String,
    /// Elements compared.
    pub checked: usize,
    pub max_rel_err: f64,
    pub ok: bool,
}

fn rand(n: usize, salt: u32) -> Vec<f64> {
    let s = Stream::new(99, Purpose::Test, salt);
    (0..n)
        .map(|i| 2.0 * s.uniform(i as u64) as f64 - 1.0)
        .collect()
}

fn proj(y: &[f64], r: &[f64]) -> f64 {
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// Compares `ana[g]` with central differences of `f` in every element of every group.
fn check<F: FnMut(&[Vec<f64>]) -> f64>(
    op: &str,
    mut inputs: Vec<Vec<f64>>,
    ana: &[Vec<f64>],
    mut f: F,
) -> GradcheckRow {
    let scale = ana.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(1e-12);
    let mut err = 0.0f64;
    let mut checked = 0;
    for g in 0..inputs.len() {
        for i in 0..inputs[g].len() {
            let x0 = inputs[g][i];
            inputs[g][i] = x0 + H;
            let lp = f(&inputs);
            inputs[g][i] = x0 - H;
            let lm = f(&inputs);
            inputs[g][i] = x0;
            let num = (lp - lm) / (2.0 * H);
            let a = ana[g][i];
            let e = (num - a).abs() / (num.abs() + a.abs()).max(floor);
            // NaN-safe maximum: a NaN error makes the row fail.
            err = if e.is_nan() || err.is_nan() {
                f64::NAN
            } else {
                err.max(e)
            };
            checked += 1;
        }
    }
    GradcheckRow {
        op: op.to_string(),
        checked,
        max_rel_err: err,
        ok: err <= TOL,
    }
}

fn conv_row(k: usize) -> GradcheckRow {
    let s = ConvShape {
        batch: 2,
        cin: 2,
        cout: 3,
        k,
        m: 6,
        t: 9,
    };
    let lens = [9, 6];
    let (x, w, b) = (rand(s.x_len(), 1), rand(s.w_len(), 2), rand(3, 3));
    let r = rand(s.y_len(), 4);
    let (mut dx, mut dw, mut db) = (vec![0.0; s.x_len()], vec![0.0; s.w_len()], vec![0.0; 3]);
    conv2d_backward(None, &x, &w, &r, &lens, &s, Some(&mut dx), &mut dw, &mut db);
    // The input beyond a clip's end is not read: its analytic gradient is 0 and so is the
    // numeric one, which the check confirms.
    check(
        &format!("conv2d k={k} (x, w, b; lengths 9,6)"),
        vec![x, w, b],
        &[dx, dw, db],
        |v| {
            let mut y = vec![0.0; s.y_len()];
            conv2d_forward(&v[0], &v[1], &v[2], &lens, &s, &mut y);
            proj(&y, &r)
        },
    )
}

fn bn_row() -> GradcheckRow {
    let (bsz, c, m, t) = (3, 2, 3, 5);
    let lens = [5, 3, 4];
    let n = bsz * c * m * t;
    let (x, g, b) = (
        rand(n, 5),
        rand(c, 6).iter().map(|v| v + 1.5).collect::<Vec<_>>(),
        rand(c, 7),
    );
    let r = rand(n, 8);
    let mut y = vec![0.0; n];
    let st = bn_train_forward(&x, &g, &b, &lens, c, m, t, 1e-5, &mut y);
    let (mut dx, mut dg, mut db) = (vec![0.0; n], vec![0.0; c], vec![0.0; c]);
    bn_backward(&x, &r, &st, &g, &lens, c, m, t, &mut dx, &mut dg, &mut db);
    check(
        "batchnorm train (x, γ, β; masked lengths)",
        vec![x, g, b],
        &[dx, dg, db],
        |v| {
            let mut y = vec![0.0; n];
            bn_train_forward(&v[0], &v[1], &v[2], &lens, c, m, t, 1e-5, &mut y);
            proj(&y, &r)
        },
    )
}

fn relu_row() -> GradcheckRow {
    // Keep inputs away from the kink at 0 (|x| ≥ 0.05 ≫ h).
    let x: Vec<f64> = rand(40, 9)
        .iter()
        .map(|v| if v.abs() < 0.05 { v + 0.1 } else { *v })
        .collect();
    let r = rand(40, 10);
    let mut y = vec![0.0; 40];
    relu_forward(&x, &mut y);
    let mut dx = vec![0.0; 40];
    relu_backward(&y, &r, &mut dx);
    check("relu", vec![x], &[dx], |v| {
        let mut y = vec![0.0; 40];
        relu_forward(&v[0], &mut y);
        proj(&y, &r)
    })
}

fn pool_row() -> GradcheckRow {
    let (bsz, c, m, t) = (2, 2, 4, 7);
    let lens_out = [3, 2];
    let n = bsz * c * m * t;
    // Distinct values (a permutation) so no window has a tie within h.
    let x: Vec<f64> = (0..n).map(|i| ((i * 37) % n) as f64 * 0.01 - 0.5).collect();
    let no = bsz * c * (m / 2) * (t / 2);
    let r = rand(no, 11);
    let (mut y, mut arg) = (vec![0.0; no], vec![0u8; no]);
    maxpool2_forward(&x, &lens_out, c, m, t, &mut y, &mut arg);
    let mut dx = vec![0.0; n];
    maxpool2_backward(&r, &arg, None, &lens_out, c, m, t, &mut dx);
    check("maxpool 2x2 + time mask", vec![x], &[dx], |v| {
        let (mut y, mut a) = (vec![0.0; no], vec![0u8; no]);
        maxpool2_forward(&v[0], &lens_out, c, m, t, &mut y, &mut a);
        proj(&y, &r)
    })
}

fn dropout_row() -> GradcheckRow {
    let mask: Vec<f64> = dropout_mask(3, 4, 0, 64, 0.3);
    let x = rand(64, 12);
    let r = rand(64, 13);
    let mut dx = r.clone();
    apply_mask(&mut dx, &mask);
    check("dropout (fixed mask)", vec![x], &[dx], |v| {
        let mut y = v[0].clone();
        apply_mask(&mut y, &mask);
        proj(&y, &r)
    })
}

fn linear_row() -> GradcheckRow {
    let (n, di, dout) = (5, 4, 3);
    let (x, w, b) = (rand(n * di, 14), rand(dout * di, 15), rand(dout, 16));
    let r = rand(n * dout, 17);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * di], vec![0.0; dout * di], vec![0.0; dout]);
    linear_backward(
        &x,
        &w,
        &r,
        n,
        di,
        dout,
        Some(&mut dx),
        &mut dw,
        &mut db,
        false,
    );
    check("linear", vec![x, w, b], &[dx, dw, db], |v| {
        let mut y = vec![0.0; n * dout];
        linear_forward(&v[0], &v[1], &v[2], n, di, dout, &mut y, false);
        proj(&y, &r)
    })
}

fn lstm_row() -> GradcheckRow {
    let s = LstmShape {
        batch: 3,
        t: 6,
        din: 4,
        h: 3,
    };
    let lens = [6, 4, 1];
    let x = rand(3 * 6 * 4, 18);
    let p = rand(2 * dir_len(4, 3), 19);
    let r = rand(3 * 6 * 6, 20);
    let mut out = vec![0.0; r.len()];
    let cache = lstm_layer_forward(&x, &lens, &p, &s, &mut out);
    let (mut dx, mut dp) = (vec![0.0; x.len()], vec![0.0; p.len()]);
    lstm_layer_backward(&x, &lens, &p, &s, &cache, &r, Some(&mut dx), &mut dp);
    check(
        "BiLSTM layer (x, all weights; lengths 6,4,1)",
        vec![x, p],
        &[dx, dp],
        |v| {
            let mut out = vec![0.0; r.len()];
            lstm_layer_forward(&v[0], &lens, &v[1], &s, &mut out);
            proj(&out, &r)
        },
    )
}

fn attention_row() -> GradcheckRow {
    let (bsz, t, d) = (3, 5, 4);
    let lens = [5, 2, 3];
    let (h, w, b) = (rand(bsz * t * d, 21), rand(d, 22), vec![0.2]);
    let r = rand(bsz * d, 23);
    let (_, cache) = attention_forward(&h, &lens, &w, b[0], bsz, t, d);
    let (mut dh, mut dw, mut db) = (vec![0.0; h.len()], vec![0.0; d], 0.0);
    attention_backward(
        &h, &lens, &w, &cache, &r, bsz, t, d, &mut dh, &mut dw, &mut db,
    );
    check(
        "attention (h, w, b; lengths 5,2,3)",
        vec![h, w, b],
        &[dh, dw, vec![db]],
        |v| {
            let (c, _) = attention_forward(&v[0], &lens, &v[1], v[2][0], bsz, t, d);
            proj(&c, &r)
        },
    )
}

fn ce_row() -> GradcheckRow {
    let z = rand(4 * 3, 24);
    let labels = [0, 2, 1, 2];
    let w = [0.5f32, 2.0, 1.25];
    let (_, g, _) = cross_entropy(&z, &labels, 3, Some(&w), 0.1);
    check(
        "cross-entropy (class weights, smoothing 0.1)",
        vec![z],
        &[g],
        |v| cross_entropy(&v[0], &labels, 3, Some(&w), 0.1).0,
    )
}

fn soft_ce_row() -> GradcheckRow {
    use crate::backend::mixup::{Mix, SoftTargets};
    let z = rand(5 * 3, 25);
    let mix = Mix {
        lambda: 0.35,
        partner: vec![3, 2, 0, 1, 4],
    };
    let w = [0.5f32, 2.0, 1.25];
    let t = SoftTargets::new(&[0, 2, 1, 2, 1], &mix, 3, 0.1, Some(&w));
    let (_, g, _) = super::cross_entropy_soft(&z, &t, 3, Some(&w));
    check(
        "mixup soft-target cross-entropy (λ 0.35, w, ε)",
        vec![z],
        &[g],
        |v| super::cross_entropy_soft(&v[0], &t, 3, Some(&w)).0,
    )
}

/// The small model of the whole-model check.
pub fn small_config(batchnorm: bool) -> ModelConfig {
    ModelConfig {
        n_mels: 16,
        kernel: 3,
        channels: [4, 8, 8],
        fc: 8,
        hidden: 6,
        lstm_layers: 2,
        classes: 3,
        dropout: 0.3,
        batchnorm,
        input_norm: Default::default(),
    }
}

fn model_row(batchnorm: bool, mode: Mode, label: &str) -> GradcheckRow {
    let cfg = small_config(batchnorm);
    let mut model = CpuModel::<f64>::new(cfg.clone(), 5);
    // Bigger weights than init so that every layer contributes visibly.
    for v in model.params.iter_mut() {
        *v *= 2.0;
    }
    let (t_max, lens) = (32, [32usize, 27, 18]);
    let x = rand(3 * cfg.n_mels * t_max, 25);
    let labels = [1usize, 0, 2];
    let cw = [1.0f32, 1.5, 0.75];
    let inp = Input {
        x: &x,
        batch: 3,
        t_max,
        lengths: &lens,
    };
    let fwd = model.forward(&inp, mode);
    let (_, dl, _) = cross_entropy(&fwd.logits, &labels, cfg.classes, Some(&cw), 0.1);
    model.zero_grads();
    model.backward(&fwd, &dl);
    let ana = vec![model.grads.clone()];
    let params = model.params.clone();
    check(label, vec![params], &ana, |v| {
        model.params.copy_from_slice(&v[0]);
        let f = model.forward(&inp, mode);
        cross_entropy(&f.logits, &labels, cfg.classes, Some(&cw), 0.1).0
    })
}

/// Every check, in a fixed order.
pub fn run_all() -> Vec<GradcheckRow> {
    let train = Mode::Train { seed: 11, step: 3 };
    vec![
        conv_row(3),
        conv_row(5),
        bn_row(),
        relu_row(),
        pool_row(),
        dropout_row(),
        linear_row(),
        lstm_row(),
        attention_row(),
        ce_row(),
        soft_ce_row(),
        model_row(true, train, "model train (BN, dropout, lengths 32,27,18)"),
        model_row(false, train, "model train (no BN, dropout)"),
        model_row(true, Mode::Eval, "model eval (BN running stats)"),
    ]
}

/// The rows as an aligned text table.
pub fn format_table(rows: &[GradcheckRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<48} {:>8} {:>12}  result",
        "check (f64 central differences)", "elements", "max rel err"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<48} {:>8} {:>12.3e}  {}",
            r.op,
            r.checked,
            r.max_rel_err,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        s,
        "error = |num−ana| / max(|num|+|ana|, 1e-3·max|ana|), h = {H:e}, pass ≤ {TOL:e}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself must flag a wrong gradient (1% off) and a NaN.
    #[test]
    fn checker_detects_wrong_gradients() {
        let x = vec![vec![0.3, -0.7, 1.1]];
        let f = |v: &[Vec<f64>]| v[0].iter().map(|a| a * a * a).sum::<f64>();
        let good: Vec<f64> = x[0].iter().map(|a| 3.0 * a * a).collect();
        assert!(check("cube", x.clone(), std::slice::from_ref(&good), f).ok);
        let mut bad = good.clone();
        bad[1] *= 1.01;
        assert!(!check("cube", x.clone(), &[bad], f).ok);
        let mut nan = good;
        nan[2] = f64::NAN;
        assert!(!check("cube", x, &[nan], f).ok);
    }
}
