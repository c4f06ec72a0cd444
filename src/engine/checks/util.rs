//! Helpers of the device checks (moved from tests/common/mod.rs): random inputs and clip
//! lengths, f32 → f64 conversion and the error checks. A failed check panics with its
//! measured error; the runner (`super::run_checks`) turns that into a FAILED row.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.
#![allow(dead_code)]

use crate::device::{Device, DeviceBuffer};
use crate::rng::{Purpose, Stream};

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// ‖a − b‖ / ‖b‖ with b the reference; the absolute ‖a − b‖ when b is all zeros (so a zero
/// reference still needs a near-zero result, and 0/0 never occurs). NaN in either input gives
/// NaN, which fails every `<= tol` check. Panics when the lengths differ.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let x = *x as f64;
        if x.is_nan() || y.is_nan() {
            return f64::NAN;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Prints and asserts `rel_err(got, want) <= tol` (NaN fails); returns the error.
pub fn check(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let e = rel_err(got, want);
    eprintln!("{what}: relative error {e:.3e} (tol {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e} > {tol}");
    e
}

/// [`check`], and positions where the reference is exactly 0 (masks: padding, ReLU, pooling
/// losers) must be exactly 0 in `got` too: a mask that leaks a tiny value would pass the norm.
pub fn check_masked(what: &str, got: &[f32], want: &[f64], tol: f64) {
    check(what, got, want, tol);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if *w == 0.0 {
            assert!(
                *g == 0.0,
                "{what}: element {i} is {g}, the reference has exactly 0"
            );
        }
    }
}

/// `n` standard normal f32 values, a fixed function of `seed`.
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    let s = Stream::new(seed, Purpose::Test, 3);
    (0..n as u64).map(|i| s.normal(i)).collect()
}

/// Clip lengths in 1..=t: the first clip full, the others random (some shorter than k/2), so
/// a batch always holds padding.
pub fn lengths(s: &Stream, k: u64, batch: usize, t: usize) -> Vec<usize> {
    (0..batch)
        .map(|b| {
            if b == 0 {
                t
            } else {
                1 + s.below(k * 10 + b as u64, t as u32 - 1) as usize
            }
        })
        .collect()
}

/// max |a − b|; NaN anywhere gives NaN, which fails every `<=` check.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

/// A device buffer's contents.
pub fn dtoh(dev: &Device, b: &DeviceBuffer<f32>) -> Vec<f32> {
    dev.dtoh(b).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_err_handles_zero_reference_and_nan() {
        assert_eq!(rel_err(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
        assert_eq!(rel_err(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((rel_err(&[1.0, 1.0], &[2.0, 1.0]) - 0.2f64.sqrt()).abs() < 1e-12);
        assert!(rel_err(&[f32::NAN], &[1.0]).is_nan());
        assert!(rel_err(&[1.0], &[f64::NAN]).is_nan());
        // NaN (which fails every `<= tol`) also with an all-zero reference
        assert!(rel_err(&[f32::NAN], &[0.0]).is_nan());
    }
}
