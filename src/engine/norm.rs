//! Per-utterance normalisation of the model input on the device (kernels/norm.cu): the model's
//! first step when `ModelConfig::input_norm` is `utterance`, equal to
//! [`crate::cpu::norm::utterance_norm`] up to f32 rounding (checks::kernels).

use crate::device::{Device, DeviceBuffer};
use anyhow::{ensure, Context, Result};

/// Threads per row (one block per clip and band; they stride over the frames).
const BLOCK: u32 = 128;

/// In place on `x` `[batch][n_mels][t_max]`, `lengths` `[batch]` already on the device (each
/// in 0..=t_max): every band of every clip over its valid frames becomes
/// (x − mean) / √(population variance + eps).
pub fn utterance_norm(
    dev: &Device,
    x: &mut DeviceBuffer<f32>,
    lengths: &DeviceBuffer<i32>,
    n_mels: usize,
    t_max: usize,
    eps: f32,
) -> Result<()> {
    let batch = lengths.len();
    ensure!(
        x.len() == batch * n_mels * t_max,
        "utterance_norm: input has {} values, expected batch {batch} × mels {n_mels} × frames {t_max}",
        x.len()
    );
    ensure!(
        eps.is_finite() && eps > 0.0,
        "utterance_norm: eps {eps} must be > 0"
    );
    let i32_of = |v: usize, what: &str| {
        i32::try_from(v).with_context(|| format!("utterance_norm: {what} = {v} exceeds i32"))
    };
    let (b, m, t) = (
        i32_of(batch, "batch")?,
        i32_of(n_mels, "mels")?,
        i32_of(t_max, "frames")?,
    );
    dev.launch(
        "utterance_norm",
        (m as u32, b as u32),
        BLOCK,
        0,
        &[
            (&*x).into(),
            lengths.into(),
            b.into(),
            m.into(),
            t.into(),
            eps.into(),
        ],
    )
}
