//! Padding invariance: in eval mode a clip's logits must not depend on how far its batch is
//! padded or on its batch mates (MODEL_SPEC.md masking rules).

use ser_engine::cpu::{CpuModel, Float, Input, Mode};
use ser_engine::model::ModelConfig;
use ser_engine::rng::{Purpose, Stream};

fn cfg() -> ModelConfig {
    // Full-width model on fewer mels to keep the test fast; kernel 7 as the paper.
    ModelConfig {
        n_mels: 32,
        ..Default::default()
    }
}

fn clip(m: usize, t: usize, salt: u32) -> Vec<f64> {
    let s = Stream::new(7, Purpose::Test, salt);
    (0..m * t).map(|i| s.normal(i as u64) as f64).collect()
}

/// Returns the max relative difference between clip A's logits alone and batched with a
/// 3× longer clip B.
fn max_rel_diff<T: Float>() -> f64 {
    let c = cfg();
    let m = c.n_mels;
    let (la, lb) = (37usize, 111usize);
    let a = clip(m, la, 1);
    let b = clip(m, lb, 2);
    let mut model = CpuModel::<T>::new(c.clone(), 3);
    // Non-trivial running statistics so eval BN is not the identity.
    let bl = ser_engine::model::BufferLayout::new(&c);
    for (i, v) in model.buffers.iter_mut().enumerate() {
        if bl
            .entries
            .iter()
            .any(|e| e.name.ends_with("running_mean") && (e.offset..e.offset + e.len).contains(&i))
        {
            *v = T::cst(0.05 * ((i % 7) as f64 - 3.0));
        }
    }
    let alone: Vec<T> = a.iter().map(|&v| T::cst(v)).collect();
    let fa = model.forward(
        &Input {
            x: &alone,
            batch: 1,
            t_max: la,
            lengths: &[la],
        },
        Mode::Eval,
    );
    // Batch [B, A] padded to lb frames; A's padding filled with zeros as the spec requires.
    let mut x = vec![T::zero(); 2 * m * lb];
    for mm in 0..m {
        for t in 0..lb {
            x[mm * lb + t] = T::cst(b[mm * lb + t]);
        }
        for t in 0..la {
            x[(m + mm) * lb + t] = T::cst(a[mm * la + t]);
        }
    }
    let fb = model.forward(
        &Input {
            x: &x,
            batch: 2,
            t_max: lb,
            lengths: &[lb, la],
        },
        Mode::Eval,
    );
    let got = &fb.logits[c.classes..];
    let scale = fa
        .logits
        .iter()
        .fold(0.0f64, |s, v| s.max(v.as_f64().abs()));
    got.iter()
        .zip(&fa.logits)
        .map(|(g, w)| (g.as_f64() - w.as_f64()).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn clip_logits_do_not_depend_on_padding_f32() {
    let d = max_rel_diff::<f32>();
    // Same arithmetic on the valid region, but GEMM blocking differs with the batch shape:
    // rounding differences of a few f32 ulps through ~10 layers.
    assert!(d <= 1e-5, "{d:e}");
}

#[test]
fn clip_logits_do_not_depend_on_padding_f64() {
    let d = max_rel_diff::<f64>();
    assert!(d <= 1e-12, "{d:e}");
}
