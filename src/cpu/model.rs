//! ArabEmoNet forward and backward on the CPU, composed from the ops of this module
//! (MODEL_SPEC.md): 3 × [conv → BN → ReLU → maxpool 2×2 → dropout → time mask] → per-frame
//! FC + ReLU + dropout → stacked BiLSTM (dropout between layers) → attention pooling →
//! classifier. Parameters, gradients and buffers are flat vectors in `model::ParamLayout` /
//! `BufferLayout` order.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::attention::{attention_backward, attention_forward, AttnCache};
use super::batchnorm::{batch_stats, bn_backward, bn_update_running, running_stats, BnStats};
use super::conv::{conv2d_backward, conv2d_forward, conv2d_forward_saving, ConvShape};
use super::dropout::{apply_mask, dropout_mask, SITE_FC, SITE_LSTM0, SITE_POOL1};
use super::fftconv::FftSaved;
use super::linear::{linear_backward, linear_forward};
use super::lstm::{lstm_layer_backward, lstm_layer_forward, LstmCache, LstmShape};
use super::pool::{
    bn_relu_maxpool2_forward, maxpool2_backward, maxpool2_forward, relu_backward, relu_forward,
    relu_inplace,
};
use super::{Float, Input, Mode};
use crate::model::{
    init_buffers, init_params, lstm_names, BufferLayout, ModelConfig, ParamLayout, BN_EPS,
    BN_MOMENTUM,
};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// The model with its parameters, gradients (same layout) and BatchNorm buffers.
#[derive(Clone, Debug)]
pub struct CpuModel<T> {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<T>,
    pub grads: Vec<T>,
    pub buffers: Vec<T>,
    /// Conv output buffer reused by [`Self::infer`] (capacity of the largest stage seen).
    conv_scratch: Vec<T>,
}

/// Saved activations of one conv stage.
#[derive(Clone, Debug, Default)]
pub struct StageCache<T: Float> {
    /// conv input `[B][cin][M][T]`
    pub input: Vec<T>,
    /// conv output (pre-BN) `[B][cout][M][T]`
    pub conv: Vec<T>,
    pub bn: Option<BnStats<T>>,
    /// ReLU output `[B][cout][M][T]`
    pub relu: Vec<T>,
    /// pool winners `[B][cout][M/2][T/2]`
    pub arg: Vec<u8>,
    /// dropout multipliers of the pooled output (training with p > 0)
    pub mask: Option<Vec<T>>,
    pub shape: ConvShape,
    /// the FFT convolution's input and weight spectra, for backward (FFT path only)
    pub fft: Option<FftSaved<T>>,
}

/// Result of a forward pass: logits and everything backward needs.
#[derive(Clone, Debug)]
pub struct Forward<T: Float> {
    /// `[B][classes]`
    pub logits: Vec<T>,
    pub batch: usize,
    pub t_max: usize,
    /// Valid lengths after 0..=3 poolings: `lens[s][b]`.
    pub lens: [Vec<usize>; 4],
    pub train: bool,
    pub stages: Vec<StageCache<T>>,
    /// Output of stage 3 `[B][C3][M3][T3]`.
    pub stage3: Vec<T>,
    /// Per-frame features `[B][T3][fc_in]`.
    pub frames: Vec<T>,
    /// FC output after ReLU (before dropout) `[B][T3][fc]`.
    pub fc_relu: Vec<T>,
    pub fc_mask: Option<Vec<T>>,
    /// Input of each LSTM layer `[B][T3][din]` (after dropout).
    pub lstm_in: Vec<Vec<T>>,
    pub lstm_cache: Vec<LstmCache<T>>,
    /// Dropout multipliers applied to the output of layer l (all but the last).
    pub lstm_masks: Vec<Option<Vec<T>>>,
    /// Output of the last LSTM layer `[B][T3][2H]`.
    pub lstm_out: Vec<T>,
    pub attn: AttnCache<T>,
    /// `[B][2H]`
    pub ctx: Vec<T>,
}

fn cast<T: Float>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::cst(x as f64)).collect()
}

impl<T: Float> CpuModel<T> {
    /// Fresh model with `init_params(cfg, seed)` (cast to T) and initial buffers.
    pub fn new(cfg: ModelConfig, seed: u64) -> Self {
        let params = cast(&init_params(&cfg, seed));
        let buffers = cast(&init_buffers(&cfg));
        Self::from_params(cfg, params, buffers).expect("init produces the layout's sizes")
    }

    /// Model from existing parameters and buffers (layout order).
    pub fn from_params(cfg: ModelConfig, params: Vec<T>, buffers: Vec<T>) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(&cfg);
        let bl = BufferLayout::new(&cfg);
        if params.len() != layout.total() || buffers.len() != bl.total() {
            bail!(
                "got {} parameters and {} buffer values; this model needs {} and {}",
                params.len(),
                buffers.len(),
                layout.total(),
                bl.total()
            );
        }
        let grads = vec![T::zero(); params.len()];
        Ok(Self {
            cfg,
            layout,
            params,
            grads,
            buffers,
            conv_scratch: Vec::new(),
        })
    }

    pub fn zero_grads(&mut self) {
        self.grads.fill(T::zero());
    }

    fn p(&self, name: &str) -> &[T] {
        &self.params[self.layout.range(name)]
    }

    /// Forward pass; panics if the input is malformed (see [`Input::validate`]; callers with
    /// user data use [`Self::try_forward`]).
    pub fn forward(&mut self, x: &Input<T>, mode: Mode) -> Forward<T> {
        self.try_forward(x, mode)
            .unwrap_or_else(|e| panic!("invalid model input: {e:#}"))
    }

    /// Forward pass. Train mode uses batch BN statistics, updates the running ones, and
    /// applies the dropout masks of (seed, step).
    pub fn try_forward(&mut self, x: &Input<T>, mode: Mode) -> Result<Forward<T>> {
        self.forward_impl(x, mode, true)
    }

    /// Eval-mode logits `[B][classes]` (the same values as `try_forward(x, Mode::Eval)`),
    /// without keeping what backward needs: the conv stages' full-size activations are
    /// neither stored nor, for the ReLU output, even written.
    pub fn infer(&mut self, x: &Input<T>) -> Result<Vec<T>> {
        Ok(self.forward_impl(x, Mode::Eval, false)?.logits)
    }

    /// Forward pass; with `keep == false` the returned `stages` are empty (no backward).
    fn forward_impl(&mut self, x: &Input<T>, mode: Mode, keep: bool) -> Result<Forward<T>> {
        let cfg = self.cfg.clone();
        x.validate(cfg.n_mels)?;
        let bsz = x.batch;
        let train = matches!(mode, Mode::Train { .. });
        let drop = match mode {
            Mode::Train { seed, step } if cfg.dropout > 0.0 => Some((seed, step)),
            _ => None,
        };
        let mask = |site: u64, n: usize| {
            drop.map(|(seed, step)| dropout_mask::<T>(seed, step, site, n, cfg.dropout))
        };
        let mut lens: [Vec<usize>; 4] = Default::default();
        lens[0] = x.lengths.to_vec();
        for s in 1..4 {
            lens[s] = lens[s - 1].iter().map(|&l| l / 2).collect();
        }
        let bl = BufferLayout::new(&cfg);
        let eps = T::cst(BN_EPS);
        // Conv stages.
        let mut cur = x.x.to_vec();
        let mut stages = Vec::with_capacity(3);
        for (s, sh) in conv_shapes(&cfg, bsz, x.t_max).into_iter().enumerate() {
            let (c, m, t) = (sh.cout, sh.m, sh.t);
            let name = |w: &str| format!("{w}{}", s + 1);
            // Conv output `[B][cout][M][T]`: fresh when kept for backward, else the model's
            // reused buffer (its first `y_len` values; no zero fill, no page faults).
            let ny = sh.y_len();
            let mut conv = if keep {
                vec![T::zero(); ny]
            } else {
                let mut v = std::mem::take(&mut self.conv_scratch);
                if v.len() < ny {
                    v.resize(ny, T::zero());
                }
                v
            };
            let (w, b) = (
                self.p(&(name("conv") + ".weight")),
                self.p(&(name("conv") + ".bias")),
            );
            let fft = if keep {
                conv2d_forward_saving(&cur, w, b, &lens[s], &sh, &mut conv[..ny])
            } else {
                conv2d_forward(&cur, w, b, &lens[s], &sh, &mut conv[..ny]);
                None
            };
            let (mo, to) = (m / 2, t / 2);
            // The ReLU output is only needed by backward (and as the buffer of the no-BN path).
            let mut act = if keep || !cfg.batchnorm {
                vec![T::zero(); ny]
            } else {
                Vec::new()
            };
            let mut pooled = vec![T::zero(); bsz * c * mo * to];
            let mut arg = vec![0u8; pooled.len()];
            let bn = if cfg.batchnorm {
                let st = if train {
                    let st = batch_stats(&conv[..ny], &lens[s], c, m, t, eps);
                    let (rm, rest) = self.buffers
                        [bl.range(&(name("bn") + ".running_mean")).start..]
                        .split_at_mut(c);
                    let (rv, rest) = rest.split_at_mut(c);
                    bn_update_running(&st, T::cst(BN_MOMENTUM), rm, rv, &mut rest[0]);
                    st
                } else {
                    running_stats(
                        &self.buffers[bl.range(&(name("bn") + ".running_mean"))],
                        &self.buffers[bl.range(&(name("bn") + ".running_var"))],
                        eps,
                    )
                };
                let (g, b) = (
                    self.p(&(name("bn") + ".weight")),
                    self.p(&(name("bn") + ".bias")),
                );
                // BN + ReLU + pool in one sweep (= bn_apply, relu, maxpool2_forward).
                bn_relu_maxpool2_forward(
                    &conv[..ny],
                    &st,
                    g,
                    b,
                    &lens[s],
                    &lens[s + 1],
                    c,
                    m,
                    t,
                    keep.then_some(&mut act[..]),
                    &mut pooled,
                    &mut arg,
                );
                Some(st)
            } else {
                act.copy_from_slice(&conv[..ny]);
                relu_inplace(&mut act);
                maxpool2_forward(&act, &lens[s + 1], c, m, t, &mut pooled, &mut arg);
                None
            };
            let relu = act;
            let mk = mask(SITE_POOL1 + s as u64, pooled.len());
            if let Some(mk) = &mk {
                apply_mask(&mut pooled, mk);
            }
            if !keep {
                self.conv_scratch = conv;
                cur = pooled;
                continue;
            }
            stages.push(StageCache {
                input: std::mem::replace(&mut cur, pooled),
                conv,
                bn,
                relu,
                arg,
                mask: mk,
                shape: sh,
                fft,
            });
        }
        let stage3 = cur;
        let (m, t) = (cfg.n_mels >> 3, x.t_max >> 3);
        // Frames: h[b][t][c·M3 + m] = stage3[b][c][m][t].
        let (c3, t3, fin) = (cfg.channels[2], t, cfg.fc_in());
        let mut frames = vec![T::zero(); bsz * t3 * fin];
        frames
            .par_chunks_mut(t3 * fin)
            .enumerate()
            .for_each(|(b, fb)| {
                for c in 0..c3 {
                    for mm in 0..m {
                        let src = &stage3[((b * c3 + c) * m + mm) * t3..][..t3];
                        for (tt, v) in src.iter().enumerate() {
                            fb[tt * fin + c * m + mm] = *v;
                        }
                    }
                }
            });
        // FC + ReLU + dropout.
        let rows = bsz * t3;
        let mut fc = vec![T::zero(); rows * cfg.fc];
        linear_forward(
            &frames,
            self.p("fc.weight"),
            self.p("fc.bias"),
            rows,
            fin,
            cfg.fc,
            &mut fc,
            true,
        );
        let mut fc_relu = vec![T::zero(); fc.len()];
        relu_forward(&fc, &mut fc_relu);
        let fc_mask = mask(SITE_FC, fc_relu.len());
        let mut h = fc_relu.clone();
        if let Some(mk) = &fc_mask {
            apply_mask(&mut h, mk);
        }
        // BiLSTM.
        let mut lstm_in = Vec::new();
        let mut lstm_cache = Vec::new();
        let mut lstm_masks = Vec::new();
        for l in 0..cfg.lstm_layers {
            let sh = LstmShape {
                batch: bsz,
                t: t3,
                din: cfg.lstm_in(l),
                h: cfg.hidden,
            };
            let r = self.lstm_range(l);
            let mut out = vec![T::zero(); rows * 2 * cfg.hidden];
            let cache = lstm_layer_forward(&h, &lens[3], &self.params[r], &sh, &mut out);
            lstm_in.push(std::mem::replace(&mut h, out));
            lstm_cache.push(cache);
            if l + 1 < cfg.lstm_layers {
                // Site 4 is layer 0's output; deeper layers use the following sites.
                let mk = mask(SITE_LSTM0 + l as u64, h.len());
                if let Some(mk) = &mk {
                    apply_mask(&mut h, mk);
                }
                lstm_masks.push(mk);
            }
        }
        let lstm_out = h;
        // Attention + classifier.
        let d = 2 * cfg.hidden;
        let (ctx, attn) = attention_forward(
            &lstm_out,
            &lens[3],
            self.p("attention.weight"),
            self.p("attention.bias")[0],
            bsz,
            t3,
            d,
        );
        let mut logits = vec![T::zero(); bsz * cfg.classes];
        linear_forward(
            &ctx,
            self.p("classifier.weight"),
            self.p("classifier.bias"),
            bsz,
            d,
            cfg.classes,
            &mut logits,
            false,
        );
        Ok(Forward {
            logits,
            batch: bsz,
            t_max: x.t_max,
            lens,
            train,
            stages,
            stage3,
            frames,
            fc_relu,
            fc_mask,
            lstm_in,
            lstm_cache,
            lstm_masks,
            lstm_out,
            attn,
            ctx,
        })
    }

    /// Range of layer l's LSTM parameters (both directions, contiguous).
    fn lstm_range(&self, l: usize) -> std::ops::Range<usize> {
        let first = self.layout.range(&lstm_names(l, false)[0]).start;
        let last = self.layout.range(&lstm_names(l, true)[3]).end;
        first..last
    }

    /// Range covering a weight and the bias that follows it.
    fn wb_range(&self, w: &str, b: &str) -> std::ops::Range<usize> {
        let rw = self.layout.range(w);
        let rb = self.layout.range(b);
        assert_eq!(rw.end, rb.start, "{w} and {b} are adjacent in the layout");
        rw.start..rb.end
    }

    /// Backward pass of `fwd` for the loss gradient `dlogits` `[B][classes]`; ACCUMULATES
    /// into `self.grads`. (In eval mode BN is treated as the fixed affine map it is.)
    pub fn backward(&mut self, fwd: &Forward<T>, dlogits: &[T]) {
        let cfg = self.cfg.clone();
        let bsz = fwd.batch;
        assert_eq!(dlogits.len(), bsz * cfg.classes);
        let mut grads = std::mem::take(&mut self.grads);
        let d = 2 * cfg.hidden;
        let t3 = fwd.t_max / 8;
        let rows = bsz * t3;
        // Classifier.
        let mut dctx = vec![T::zero(); bsz * d];
        {
            let r = self.wb_range("classifier.weight", "classifier.bias");
            let (dw, db) = grads[r].split_at_mut(cfg.classes * d);
            linear_backward(
                &fwd.ctx,
                self.p("classifier.weight"),
                dlogits,
                bsz,
                d,
                cfg.classes,
                Some(&mut dctx),
                dw,
                db,
                false,
            );
        }
        // Attention.
        let mut dh = vec![T::zero(); rows * d];
        {
            let r = self.wb_range("attention.weight", "attention.bias");
            let (dw, db) = grads[r].split_at_mut(d);
            attention_backward(
                &fwd.lstm_out,
                &fwd.lens[3],
                self.p("attention.weight"),
                &fwd.attn,
                &dctx,
                bsz,
                t3,
                d,
                &mut dh,
                dw,
                &mut db[0],
            );
        }
        // LSTM layers, last to first.
        for l in (0..cfg.lstm_layers).rev() {
            let din = cfg.lstm_in(l);
            let sh = LstmShape {
                batch: bsz,
                t: t3,
                din,
                h: cfg.hidden,
            };
            let r = self.lstm_range(l);
            let mut dx = vec![T::zero(); rows * din];
            lstm_layer_backward(
                &fwd.lstm_in[l],
                &fwd.lens[3],
                &self.params[r.clone()],
                &sh,
                &fwd.lstm_cache[l],
                &dh,
                Some(&mut dx),
                &mut grads[r],
            );
            if l > 0 {
                if let Some(mk) = &fwd.lstm_masks[l - 1] {
                    apply_mask(&mut dx, mk);
                }
            }
            dh = dx;
        }
        // FC: dropout, ReLU, linear.
        if let Some(mk) = &fwd.fc_mask {
            apply_mask(&mut dh, mk);
        }
        let mut dfc = vec![T::zero(); dh.len()];
        relu_backward(&fwd.fc_relu, &dh, &mut dfc);
        drop_vec(dh);
        let fin = cfg.fc_in();
        let mut dframes = vec![T::zero(); rows * fin];
        {
            let r = self.wb_range("fc.weight", "fc.bias");
            let (dw, db) = grads[r].split_at_mut(cfg.fc * fin);
            linear_backward(
                &fwd.frames,
                self.p("fc.weight"),
                &dfc,
                rows,
                fin,
                cfg.fc,
                Some(&mut dframes),
                dw,
                db,
                true,
            );
        }
        // Frames back to [B][C3][M3][T3].
        let (c3, m3) = (cfg.channels[2], cfg.n_mels / 8);
        let mut dcur = vec![T::zero(); fwd.stage3.len()];
        dcur.par_chunks_mut(c3 * m3 * t3)
            .enumerate()
            .for_each(|(b, db)| {
                for c in 0..c3 {
                    for mm in 0..m3 {
                        let dst = &mut db[(c * m3 + mm) * t3..][..t3];
                        for (tt, v) in dst.iter_mut().enumerate() {
                            *v = dframes[(b * t3 + tt) * fin + c * m3 + mm];
                        }
                    }
                }
            });
        // Conv stages, last to first.
        for s in (0..3).rev() {
            let st = &fwd.stages[s];
            let sh = st.shape;
            let (c, m, t) = (sh.cout, sh.m, sh.t);
            if let Some(mk) = &st.mask {
                apply_mask(&mut dcur, mk);
            }
            // Pool and ReLU backward in one pass.
            let mut dact = vec![T::zero(); sh.y_len()];
            maxpool2_backward(
                &dcur,
                &st.arg,
                Some(&st.relu),
                &fwd.lens[s + 1],
                c,
                m,
                t,
                &mut dact,
            );
            let dconv = if let Some(bn) = &st.bn {
                let r = self.wb_range(&format!("bn{}.weight", s + 1), &format!("bn{}.bias", s + 1));
                let gamma = &self.params[r.start..r.start + c];
                let (dg, dbt) = grads[r.clone()].split_at_mut(c);
                let mut dconv = vec![T::zero(); sh.y_len()];
                bn_backward(
                    &st.conv,
                    &dact,
                    bn,
                    gamma,
                    &fwd.lens[s],
                    c,
                    m,
                    t,
                    &mut dconv,
                    dg,
                    dbt,
                );
                dconv
            } else {
                dact
            };
            let r = self.wb_range(
                &format!("conv{}.weight", s + 1),
                &format!("conv{}.bias", s + 1),
            );
            let w = &self.params[r.start..r.start + sh.w_len()];
            let (dw, db) = grads[r].split_at_mut(sh.w_len());
            if s > 0 {
                let mut dx = vec![T::zero(); sh.x_len()];
                conv2d_backward(
                    st.fft.as_ref(),
                    &st.input,
                    w,
                    &dconv,
                    &fwd.lens[s],
                    &sh,
                    Some(&mut dx),
                    dw,
                    db,
                );
                dcur = dx;
            } else {
                let saved = st.fft.as_ref();
                conv2d_backward(saved, &st.input, w, &dconv, &fwd.lens[s], &sh, None, dw, db);
            }
        }
        self.grads = grads;
    }
}

/// The three conv stages' shapes for a batch of `batch` clips padded to `t_max` frames
/// (each 2×2 pool halves mels and frames, rounding down).
pub fn conv_shapes(cfg: &ModelConfig, batch: usize, t_max: usize) -> [ConvShape; 3] {
    std::array::from_fn(|s| ConvShape {
        batch,
        cin: cfg.stage_in(s),
        cout: cfg.channels[s],
        k: cfg.kernel,
        m: cfg.n_mels >> s,
        t: t_max >> s,
    })
}

/// Frees a large temporary early (makes the intent explicit).
fn drop_vec<T>(v: Vec<T>) {
    drop(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cfg() -> ModelConfig {
        super::super::gradcheck::small_config(true)
    }

    #[test]
    fn forward_shapes_and_running_stats() {
        let cfg = small_cfg();
        let mut m = CpuModel::<f64>::new(cfg.clone(), 1);
        let lens = [16, 11];
        let x = super::super::testutil::rand(2 * 16 * 16, 3);
        let inp = Input {
            x: &x,
            batch: 2,
            t_max: 16,
            lengths: &lens,
        };
        let f = m.forward(&inp, Mode::Eval);
        assert_eq!(f.logits.len(), 6);
        assert!(f.logits.iter().all(|v| v.is_finite()));
        let before = m.buffers.clone();
        let _ = m.forward(&inp, Mode::Train { seed: 1, step: 0 });
        let bl = BufferLayout::new(&cfg);
        assert_eq!(m.buffers[bl.range("bn1.num_batches_tracked")][0], 1.0);
        assert_ne!(m.buffers, before);
        // Bad lengths are an error, not a panic, through try_forward.
        let bad = [16, 7];
        let inp = Input {
            x: &x,
            batch: 2,
            t_max: 16,
            lengths: &bad,
        };
        assert!(m.try_forward(&inp, Mode::Eval).is_err());
        assert!(m.infer(&inp).is_err());
    }

    /// `infer` skips the caches but computes the same arithmetic: bit-identical logits to the
    /// eval forward, with and without BatchNorm, on clips of unequal (odd) lengths.
    #[test]
    fn infer_equals_eval_forward() {
        for batchnorm in [true, false] {
            let cfg = ModelConfig {
                batchnorm,
                ..small_cfg()
            };
            let mut m = CpuModel::<f32>::new(cfg, 4);
            let lens = [23, 13, 17];
            let x: Vec<f32> = super::super::testutil::rand(3 * 16 * 23, 5)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let inp = Input {
                x: &x,
                batch: 3,
                t_max: 23,
                lengths: &lens,
            };
            // Train once so the running statistics are not the initial ones.
            let _ = m.forward(&inp, Mode::Train { seed: 1, step: 0 });
            let want = m.forward(&inp, Mode::Eval).logits;
            let got = m.infer(&inp).unwrap();
            assert!(want.iter().all(|v| v.is_finite()));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "batchnorm {batchnorm}");
            // The reused conv buffer holds the larger batch's values: a smaller batch after
            // it, and the larger one again, still match.
            let one = Input {
                x: &x[..16 * 23],
                batch: 1,
                t_max: 23,
                lengths: &lens[..1],
            };
            let want1 = m.forward(&one, Mode::Eval).logits;
            assert_eq!(bits(&m.infer(&one).unwrap()), bits(&want1));
            assert_eq!(bits(&m.infer(&inp).unwrap()), bits(&want));
        }
    }
}
