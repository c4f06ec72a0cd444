//! The composed passes: [`cnn_forward`] and [`cnn_backward`] run the three conv stages and
//! the FC through the op files of [`super`] into a [`super::CnnWorkspace`], like
//! `cpu::model::CpuModel::{forward, backward}` up to the FC output.

use super::batchnorm::{bn_relu_backward, bn_relu_forward, bn_stats, bn_update_running};
use super::conv::{conv2d_backward_with, conv2d_forward_with, ConvScratch};
use super::fc::{fc_backward, fc_forward, frames_reshape};
use super::i32_of;
use super::params::{BnRunning, CnnParams};
use super::pool::{maxpool_backward, maxpool_forward};
use super::workspace::{CnnOptions, CnnWorkspace};
use crate::backend::memory::{bn_chunks, Dims4};
use crate::cpu::dropout::{SITE_FC, SITE_POOL1};
use crate::cpu::Mode;
use crate::device::{AsView, AsViewMut, Device, DeviceBuffer};
use crate::model::ModelConfig;
use anyhow::{bail, ensure, Result};

/// Forward of the three conv stages and the FC for the input in `ws` (`ws.input_mut()`,
/// `[B][n_mels][t_max]`, kept for the backward) with per-clip `lengths`; results are written
/// into `ws`. Training mode uses batch statistics, updates `running` and applies the dropout
/// masks of (seed, step); eval uses `running`. `scratch` grows to this shape's im2col chunks
/// if it is smaller (the only allocation).
#[allow(clippy::too_many_arguments)]
pub fn cnn_forward(
    dev: &Device,
    cfg: &ModelConfig,
    params: &CnnParams<impl AsView<f32>>,
    running: &mut BnRunning,
    lengths: &[usize],
    mode: Mode,
    opts: &CnnOptions,
    ws: &mut CnnWorkspace,
    scratch: &mut ConvScratch,
) -> Result<()> {
    cfg.validate()?;
    let bsz = lengths.len();
    if bsz == 0 {
        bail!("empty batch");
    }
    let t_max = ws.t_max;
    ensure!(
        bsz == ws.batch,
        "{bsz} lengths for a workspace of batch {}",
        ws.batch
    );
    let x_len = ws.stages[0].input.len();
    ensure!(
        x_len == bsz * cfg.n_mels * t_max,
        "input has {x_len} values, expected batch {bsz} × mels {} × frames {t_max}",
        cfg.n_mels
    );
    if let Some((b, &l)) = lengths
        .iter()
        .enumerate()
        .find(|(_, &l)| !(8..=t_max).contains(&l))
    {
        bail!("clip {b} has length {l}; lengths must be in 8..={t_max}");
    }
    scratch.reserve(dev, &ws.shapes(), opts.max_col_elems)?;
    let train = matches!(mode, Mode::Train { .. });
    ws.train = train;
    ws.stats_missing = !train && cfg.batchnorm && !opts.eval_stats_snapshot;
    ws.drop = match mode {
        Mode::Train { seed, step } if cfg.dropout > 0.0 => Some((seed, step, cfg.dropout)),
        _ => None,
    };
    ws.lens[0] = lengths.to_vec();
    for s in 1..4 {
        ws.lens[s] = ws.lens[s - 1].iter().map(|&l| l / 2).collect();
    }
    for (l, d) in ws.lens.iter().zip(ws.lens_dev.iter_mut()) {
        let v: Vec<i32> = l
            .iter()
            .map(|&l| i32_of(l, "clip length"))
            .collect::<Result<_>>()?;
        dev.copy_htod(&v, d)?;
    }
    for s in 0..3 {
        let drop = ws.dropout(SITE_POOL1 + s as u64);
        let (head, tail) = ws.stages.split_at_mut(s + 1);
        let st = &mut head[s];
        // the pooled output is the next stage's input (stage 3: `stage3`)
        let pooled = match tail.first_mut() {
            Some(next) => &mut next.input,
            None => &mut ws.stage3,
        };
        let sh = st.shape;
        let d4 = Dims4 {
            batch: bsz,
            c: sh.cout,
            m: sh.m,
            t: sh.t,
        };
        let lens_in = &ws.lens_dev[s];
        conv2d_forward_with(
            dev,
            &st.input,
            &params.conv_w[s],
            &params.conv_b[s],
            lens_in,
            &sh,
            &mut st.conv,
            opts.max_col_elems,
            scratch,
        )?;
        match (&mut st.mean, &mut st.var, &st.bn_sums) {
            (Some(mean), Some(var), Some(bn_scratch)) => {
                if train {
                    bn_stats(
                        dev,
                        &st.conv,
                        lens_in,
                        d4,
                        mean,
                        var,
                        bn_scratch,
                        bn_chunks(d4),
                    )?;
                    let (rm, rv) = (&mut running.mean[s], &mut running.var[s]);
                    bn_update_running(dev, mean, var, d4.count(&ws.lens[s]), rm, rv)?;
                    running.batches_tracked[s] += 1.0;
                } else if opts.eval_stats_snapshot {
                    // a copy, so later training steps cannot change what backward sees
                    crate::engine::rnn::copy_slice(dev, mean, &running.mean[s], 0)?;
                    crate::engine::rnn::copy_slice(dev, var, &running.var[s], 0)?;
                }
                let (mean, var) = if train || opts.eval_stats_snapshot {
                    (&*mean, &*var)
                } else {
                    (&running.mean[s], &running.var[s])
                };
                bn_relu_forward(
                    dev,
                    &st.conv,
                    mean,
                    var,
                    &params.bn_w[s],
                    &params.bn_b[s],
                    lens_in,
                    d4,
                    &mut st.relu,
                )?;
            }
            _ => {
                // conv output is already 0 at invalid positions
                crate::device::ops::relu_forward(dev, &mut st.relu, &st.conv)?;
            }
        }
        maxpool_forward(
            dev,
            &st.relu,
            &ws.lens_dev[s + 1],
            d4,
            drop,
            pooled,
            &mut st.arg,
        )?;
    }
    let sh = ws.stages[2].shape;
    let (m, t) = (sh.m / 2, sh.t / 2);
    let d3 = Dims4 {
        batch: bsz,
        c: cfg.channels[2],
        m,
        t,
    };
    frames_reshape(dev, &ws.stage3, d3, false, &mut ws.frames)?;
    let rows = bsz * t;
    let drop = ws.dropout(SITE_FC);
    fc_forward(
        dev,
        &ws.frames,
        &params.fc_w,
        &params.fc_b,
        rows,
        cfg.fc_in(),
        cfg.fc,
        drop,
        &mut ws.fc_relu,
        &mut ws.out,
    )
}

/// Backward of [`cnn_forward`] (whose results `ws` holds) from `dout` (gradient of `ws.out`,
/// `[B][T3][fc]`); ACCUMULATES into `grads` (no gradient for the input). Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn cnn_backward(
    dev: &Device,
    cfg: &ModelConfig,
    params: &CnnParams<impl AsView<f32>>,
    ws: &mut CnnWorkspace,
    dout: &DeviceBuffer<f32>,
    grads: &mut CnnParams<impl AsViewMut<f32>>,
    opts: &CnnOptions,
    scratch: &mut ConvScratch,
) -> Result<()> {
    ensure!(
        !ws.stats_missing,
        "cnn_backward: the eval-mode forward read the BatchNorm running statistics without a \
         snapshot (CnnOptions::eval_stats_snapshot is off), so it cannot be differentiated"
    );
    let bsz = ws.batch;
    let t3 = ws.t_max / 8;
    let rows = bsz * t3;
    ensure!(
        dout.len() == rows * cfg.fc,
        "cnn_backward: gradient has {} values, expected {}",
        dout.len(),
        rows * cfg.fc
    );
    let fin = cfg.fc_in();
    let drop = ws.dropout(SITE_FC);
    fc_backward(
        dev,
        &ws.frames,
        &params.fc_w,
        &ws.fc_relu,
        dout,
        rows,
        fin,
        cfg.fc,
        drop,
        Some(&mut ws.dframes),
        &mut grads.fc_w,
        &mut grads.fc_b,
        &mut ws.fc_dz,
    )?;
    let d3 = Dims4 {
        batch: bsz,
        c: cfg.channels[2],
        m: cfg.n_mels / 8,
        t: t3,
    };
    frames_reshape(dev, &ws.dframes, d3, true, &mut ws.stages[2].dpool)?;
    for s in (0..3).rev() {
        let drop = ws.dropout(SITE_POOL1 + s as u64);
        let (head, tail) = ws.stages.split_at_mut(s);
        let st = &mut tail[0];
        let sh = st.shape;
        let d4 = Dims4 {
            batch: bsz,
            c: sh.cout,
            m: sh.m,
            t: sh.t,
        };
        maxpool_backward(
            dev,
            &st.dpool,
            &st.arg,
            &ws.lens_dev[s + 1],
            d4,
            drop,
            &mut st.drelu,
        )?;
        match (&st.mean, &st.var, &mut st.bn_sums) {
            (Some(mean), Some(var), Some(sums)) => bn_relu_backward(
                dev,
                &st.drelu,
                &st.relu,
                &st.conv,
                mean,
                var,
                &params.bn_w[s],
                &ws.lens_dev[s],
                d4,
                ws.train,
                &mut st.dconv,
                &mut grads.bn_w[s],
                &mut grads.bn_b[s],
                sums,
                bn_chunks(d4),
            )?,
            _ => crate::device::ops::relu_backward(dev, &mut st.dconv, &st.drelu, &st.relu)?,
        }
        // the input gradient is the previous stage's pool-output gradient
        let dx = head.last_mut().map(|prev| &mut prev.dpool);
        conv2d_backward_with(
            dev,
            &st.input,
            &params.conv_w[s],
            &st.dconv,
            &ws.lens_dev[s],
            &sh,
            dx,
            &mut grads.conv_w[s],
            &mut grads.conv_b[s],
            opts.max_col_elems,
            scratch,
        )?;
    }
    Ok(())
}
