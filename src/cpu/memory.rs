//! The memory model of a CPU training step: an upper bound on the bytes one step of a
//! `(batch, t_max)` shape adds to the process (saved activations, gradients, FFT spectra,
//! per-thread scratch, the optimiser's state), computed from the shapes without allocating,
//! so `train` can refuse a batch that does not fit before any work starts.
//!
//! It mirrors the buffers [`super::model`], [`super::conv`] and [`super::lstm`] allocate;
//! a convolution is counted with the algorithm `SER_CPU_CONV` fixes or the cost model picks,
//! and by default with both (the choice is timed per machine: [`super::conv::tune`]). The sum is scaled by
//! [`ALLOCATOR_SLACK`] and [`FIXED_BYTES`] is added for what the shapes do not tell (glibc's
//! per-thread arenas keep freed blocks, FFT plans, thread stacks). tests/train_memory.rs checks
//! that `train`'s measured peak never exceeds the bound, over the corners of the options'
//! ranges that run in seconds.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model`.

use super::conv::direct::chunk_rows;
use super::conv::fft::Grid;
use super::conv::tune::{conv_algo_model, conv_policy, ConvPolicy};
use super::conv::ConvAlgo;
use crate::model::{ModelConfig, ParamLayout};

use super::model::conv_shapes;

/// Multiplier on the counted bytes for allocator overheads and fragmentation.
pub const ALLOCATOR_SLACK: f64 = 1.25;
/// Bytes added to every estimate: FFT plans, thread stacks, rayon's pool, small buffers.
pub const FIXED_BYTES: u64 = 64 << 20;

/// Upper bound, in bytes, of what one training step (forward, backward, Adam, and the
/// validation forward between epochs) of `batch` clips padded to `t_max` frames adds to the
/// process, on `threads` worker threads, in f32.
pub fn train_step_bytes(cfg: &ModelConfig, batch: usize, t_max: usize, threads: usize) -> u64 {
    let b = batch.max(1);
    let t_max = t_max.max(crate::model::MIN_FRAMES);
    let params = ParamLayout::new(cfg).0.total();
    // Copies of the parameters: params, grads and the backward's fresh gradient buffer,
    // Adam's two moments, the EMA, the best epoch's weights; while a checkpoint is saved, the
    // state read back (params, moments, EMA) and its serialized bytes.
    let mut held = 15 * params;
    // Thread-local scratch of the calling thread (kept between steps, grown to the largest
    // stage): the FFT's input and weight spectra (inference path), mixed spectra, dy spectra,
    // the weight-gradient lags.
    let mut big = [0usize; 5];
    let mut saved = 0; // forward outputs kept for the backward
    let mut backward_peak = 0; // the largest set of one stage's backward temporaries
    let mut per_thread = 0; // the largest per-worker scratch of any stage
    let policy = conv_policy();
    for sh in conv_shapes(cfg, b, t_max) {
        let (cin, cout, k, m, t) = (sh.cin, sh.cout, sh.k, sh.m, sh.t);
        let (x, y) = (sh.x_len(), sh.y_len());
        let pooled = b * cout * (m / 2) * (t / 2);
        // Which algorithms this shape may run: fixed by SER_CPU_CONV, the cost model's pick,
        // or (timed on this machine) either.
        let (fft, direct) = match policy {
            ConvPolicy::Fixed(a) => (a == ConvAlgo::Fft, a == ConvAlgo::Direct),
            ConvPolicy::Model => {
                let a = conv_algo_model(&sh);
                (a == ConvAlgo::Fft, a == ConvAlgo::Direct)
            }
            ConvPolicy::Measure => (true, true),
        };
        let (fft, direct) = (usize::from(fft), usize::from(direct));
        // input, conv output, ReLU output, pool argmax (u8), dropout mask.
        saved += x + 2 * y + pooled.div_ceil(4) + pooled;
        // dy of the pool, dReLU, dconv, dx; the direct path's per-clip dW copies.
        backward_peak = backward_peak.max(pooled + 2 * y + x + direct * b * sh.w_len());
        // FFT grid for the longest clip of the batch.
        let g = Grid::new(&sh, t);
        let (np, nh, b2) = (g.n1 * g.nh, g.nh, 2 * b);
        let (nxe, ngs) = (2 * cin * np * b2, 2 * np * cout * cin);
        // FFT: the input and weight spectra kept for the backward.
        saved += fft * (nxe + ngs);
        for (slot, n) in big.iter_mut().zip([
            nxe,
            ngs,
            np * cout.max(cin) * b2,
            2 * cout * np * b2,
            g.n1 * 2 * k * cout * cin,
        ]) {
            *slot = (*slot).max(fft * n);
        }
        let kk = k * k * cin;
        let direct_scratch =
            cin * m * (t + 2 * (k / 2)) + cout * m * t + kk * chunk_rows::<f32>(&sh, t) * t;
        let fft_scratch = 2 * g.n2
            + 2 * nh
            + 2 * nh * g.n1
            + 2 * k * nh * cin
            + 2 * cout * cin
            + 2 * nh * cout * cin;
        per_thread = per_thread.max(direct * (direct_scratch + kk * cout) + fft * fft_scratch);
    }
    held += big.iter().sum::<usize>();
    // FC and the BiLSTM on t/8 frames.
    let t3 = ModelConfig::frames_out(t_max);
    let rows = b * t3;
    let (fin, h) = (cfg.fc_in(), cfg.hidden);
    saved += b * cfg.channels[2] * (cfg.n_mels / 8) * t3 + rows * fin + 3 * rows * cfg.fc;
    let mut lstm_backward = 0;
    for l in 0..cfg.lstm_layers {
        let din = cfg.lstm_in(l);
        // input copy, dropout mask, gates [B][2][T][4H], c, h_prev, c_prev, output.
        saved += 2 * rows * din + rows * 2 * (4 * h + 3 * h) + rows * 2 * h;
        // dgates of both directions, one direction's dgates and dh, dx.
        lstm_backward = lstm_backward.max(rows * 2 * 4 * h + rows * 5 * h + rows * din);
    }
    // Attention, logits and the FC backward (dh, dfc, dframes, the frames back to stages).
    saved += 4 * b * 2 * h + rows * 2 + b * cfg.classes;
    backward_peak = backward_peak.max(lstm_backward + rows * (2 * h + 2 * cfg.fc + 2 * fin));
    let floats = held + saved + backward_peak + threads.max(1) * per_thread;
    (floats as f64 * 4.0 * ALLOCATOR_SLACK) as u64 + FIXED_BYTES
}
