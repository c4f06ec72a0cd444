//! Analytic cost model of the device operations: for each kernel launch (and each cuBLAS GEMM
//! or cuDNN convolution), its floating-point operations and the DRAM bytes it must move at
//! least, computed from the launch's own integer arguments, so the numbers follow exactly the
//! shapes the engine launches with. Used by [`super::profile`] to turn measured times into
//! GFLOP/s, GB/s and arithmetic intensity (FLOP/byte), i.e. a position under the roofline.
//!
//! Conventions (an estimate a reader can check against the kernel source, not a count of
//! instructions):
//! - FLOP: one per add, multiply, compare/max, division, square root and transcendental
//!   (exp, tanh: 1 each); a fused multiply-add is 2; integer work (indexing, the Philox
//!   generator of dropout masks) is not counted. A GEMM is 2·m·n·k.
//! - bytes: 4 per f32/i32 element the kernel must read, read once, and per element it writes,
//!   written once (a perfect cache: im2col's k² reuse of the input and the two passes of
//!   `bn_stats_partial` cost nothing extra); an accumulated output (`+=`, GEMM β ≠ 0) is read and
//!   written. This is the floor a GPU kernel can reach, so bytes/time is the fraction of the
//!   bandwidth roofline the kernel achieves.
//! - Work is counted at the padded shape (every clip at `t_max`): the kernels that skip padded
//!   frames (the LSTM recurrences, BatchNorm reductions) do less for ragged batches, so there
//!   the model is an upper bound; for full-length batches it is the kernel's work.
//!
//! A new kernel the training step launches needs a formula in [`launch_cost`]: the profile
//! test (tests/sim_profile.rs) fails for a launched kernel without one.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

use super::kernels::KernelSig;
use super::{Dim3, KernelArg};

/// Work of one device operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Floating-point operations.
    pub flops: f64,
    /// Minimum DRAM bytes read plus written.
    pub bytes: f64,
}

impl Cost {
    fn new(flops: f64, elems: f64) -> Cost {
        Cost {
            flops,
            bytes: 4.0 * elems,
        }
    }

    /// Row-major `c (m×n) = α·op(a)·op(b) + β·c`: 2·m·n·k FLOP; a, b read once, c written
    /// (and read when β ≠ 0).
    pub fn gemm(m: usize, n: usize, k: usize, beta: f32) -> Cost {
        let (m, n, k) = (m as f64, n as f64, k as f64);
        let c_elems = if beta != 0.0 { 2.0 * m * n } else { m * n };
        Cost::new(2.0 * m * n * k, m * k + k * n + c_elems)
    }

    /// A dense k×k convolution (stride 1, same padding) of x `[b][cin][m][t]` with w
    /// `[cout][cin][k][k]` into y `[b][cout][m][t]`: 2·b·m·t·cout·cin·k² FLOP for each of the
    /// three passes. Bytes: forward reads x, w and writes y; backward-filter reads x, dy and
    /// accumulates dw (read + write); backward-data reads w, dy and writes dx.
    pub fn conv(
        pass: ConvPass,
        b: usize,
        cin: usize,
        cout: usize,
        m: usize,
        t: usize,
        k: usize,
    ) -> Cost {
        let f = |v: usize| v as f64;
        let x = f(b) * f(cin) * f(m) * f(t);
        let y = f(b) * f(cout) * f(m) * f(t);
        let w = f(cout) * f(cin) * f(k) * f(k);
        let flops = 2.0 * y * f(cin) * f(k) * f(k);
        let elems = match pass {
            ConvPass::Forward => x + w + y,
            ConvPass::BackwardFilter => x + y + 2.0 * w,
            ConvPass::BackwardData => w + y + x,
        };
        Cost::new(flops, elems)
    }
}

/// Which convolution of [`Cost::conv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    Forward,
    BackwardFilter,
    BackwardData,
}

/// Names of device operations that are not kernels of `kernels/*.cu` (library calls on cuda);
/// the profiler records them under these names.
pub const LIBRARY_OPS: &[&str] = &[
    "cublas_sgemm_nn",
    "cublas_sgemm_nt",
    "cublas_sgemm_tn",
    "cudnn_conv_forward",
    "cudnn_conv_backward_filter",
    "cudnn_conv_backward_data",
];

/// Cost of one launch of `sig` with these arguments (already checked against the signature);
/// None for a kernel the model does not cover (the front end has its own,
/// `engine::frontend::DeviceFrontEnd::costs`; test kernels have none).
pub fn launch_cost(sig: &KernelSig, grid: Dim3, _block: Dim3, args: &[KernelArg]) -> Option<Cost> {
    // integer (or float) argument `name` as f64
    let a = |name: &str| -> Option<f64> {
        let i = sig.params.iter().position(|p| p.name == name)?;
        match args.get(i)? {
            KernelArg::F32(v) => Some(*v as f64),
            x => x.int_value().map(|v| v as f64),
        }
    };
    // elements of a [batch][c][m][t] tensor
    let bcmt = || Some(a("batch")? * a("c")? * a("m")? * a("t")?);
    let c = Cost::new;
    Some(match sig.name {
        "sgemm_nn" | "sgemm_nt" | "sgemm_tn" => Cost::gemm(
            a("m")? as usize,
            a("n")? as usize,
            a("k")? as usize,
            a("beta")? as f32,
        ),
        // --- conv stages (im2col path) ---
        "cnn_im2col" => {
            let (nb, cin, k) = (a("nb")?, a("cin")?, a("k")?);
            // pixels of the chunk; reads x [nb][cin][m][t] once, writes col [cin·k²][px]
            let px = nb * a("m")? * a("t")?;
            c(0.0, cin * px + nb + cin * k * k * px)
        }
        "cnn_conv_out" => {
            let n = a("cout")? * a("nb")? * a("m")? * a("t")?;
            c(n, 2.0 * n + a("cout")? + a("nb")?)
        }
        "cnn_conv_dy_gather" => {
            let n = a("cout")? * a("nb")? * a("m")? * a("t")?;
            c(0.0, 2.0 * n + a("nb")?)
        }
        "cnn_col2im" => {
            let (nb, cin, k) = (a("nb")?, a("cin")?, a("k")?);
            let x = nb * cin * a("m")? * a("t")?;
            c(x * k * k, x * k * k + x + nb)
        }
        // pass 1 of the bias gradient's row sums: reads a, writes rows·chunks partials
        "cnn_row_sum_partial" => {
            let (r, n, k) = (a("rows")?, a("cols")?, a("chunks")?);
            c(r * n, r * n + r * k)
        }
        // pass 2 of the 2-D reductions: reads the partials, accumulates out
        "reduce_chunks_acc" => {
            let (r, k) = (a("rows")?, a("chunks")?);
            c(r * k, r * k + 2.0 * r)
        }
        // --- masking around cuDNN ---
        "cnn_time_mask" => c(0.0, 2.0 * bcmt()? + a("batch")?),
        "cnn_bias_mask" => {
            let n = bcmt()?;
            c(n, 2.0 * n + a("c")? + a("batch")?)
        }
        // pass 1 of the masked bias gradient: reads dy once, writes a partial per (channel, chunk)
        "cnn_bias_grad_partial" => {
            let n = bcmt()?;
            c(n, n + a("c")? * a("chunks")? + a("batch")?)
        }
        // --- BatchNorm + ReLU ---
        // two passes over each chunk (the second from cache); writes count, mean, M2 per chunk
        "bn_stats_partial" => c(
            4.0 * bcmt()?,
            bcmt()? + 3.0 * a("c")? * a("chunks")? + a("batch")?,
        ),
        // Chan's merge: ~10 FLOP per chunk
        "bn_stats_merge" => {
            let (ch, k) = (a("c")?, a("chunks")?);
            c(10.0 * ch * k, 3.0 * ch * k + 2.0 * ch)
        }
        "bn_update_running" => c(6.0 * a("c")?, 6.0 * a("c")?),
        "bn_relu_forward" => c(5.0 * bcmt()?, 2.0 * bcmt()? + 4.0 * a("c")? + a("batch")?),
        // reads dy, y, x; mean, var; writes 2 partials per (channel, chunk)
        "bn_relu_backward_partial" => c(
            6.0 * bcmt()?,
            3.0 * bcmt()? + 2.0 * a("c")? + 2.0 * a("c")? * a("chunks")? + a("batch")?,
        ),
        // reads the partials; writes sums; accumulates dgamma, dbeta
        "bn_relu_backward_merge" => {
            let (ch, k) = (a("c")?, a("chunks")?);
            c(2.0 * ch * k, 2.0 * ch * k + 6.0 * ch)
        }
        // reads dy, y, x, writes dx; mean, var, gamma, sums
        "bn_relu_backward_dx" => c(10.0 * bcmt()?, 4.0 * bcmt()? + 5.0 * a("c")? + a("batch")?),
        // --- 2×2 max pool (+ fused dropout) ---
        "pool_forward" => {
            let out = a("batch")? * a("c")? * (a("m")? / 2.0).floor() * (a("t")? / 2.0).floor();
            // 3 compares per output (+ the dropout multiply); reads the 4 inputs of each
            // output, writes the value and the argmax
            c((3.0 + a("drop")?.min(1.0)) * out, 6.0 * out + a("batch")?)
        }
        "pool_backward" => {
            let out = a("batch")? * a("c")? * (a("m")? / 2.0).floor() * (a("t")? / 2.0).floor();
            // writes all of dx (zeros included), reads dy and the argmax
            c(a("drop")?.min(1.0) * out, bcmt()? + 2.0 * out + a("batch")?)
        }
        "dropout_mask_fill" => c(0.0, a("n")?),
        "dropout_apply" | "lstm_dropout" => c(a("n")?, 2.0 * a("n")?),
        // --- per-frame FC ---
        "fc_frames_forward" | "fc_frames_backward" => c(0.0, 2.0 * bcmt()?),
        "fc_bias_relu_dropout" => {
            let n = a("rows")? * a("dout")?;
            // r read and written, h written
            c((2.0 + a("drop")?.min(1.0)) * n, 3.0 * n + a("dout")?)
        }
        "fc_relu_dropout_backward" => {
            let n = a("rows")? * a("dout")?;
            c((1.0 + a("drop")?.min(1.0)) * n, 3.0 * n)
        }
        "fc_bias_grad_partial" => {
            let n = a("rows")? * a("dout")?;
            c(n, n + a("dout")? * a("chunks")?)
        }
        // --- BiLSTM ---
        "lstm_stack_wih" => c(0.0, 16.0 * a("h")? * a("din")?),
        "lstm_forward_recurrent" => {
            let (rows, h) = (a("n_rows")?, a("h")?);
            // per row and direction: W_hh·h (8h²), + pre + two biases (12h), 3 sigmoids
            // (4 each) and 2 tanh (13h), cell and hidden update (5h)
            let flops = 2.0 * rows * (8.0 * h * h + 30.0 * h);
            // reads pre [8h]; writes out, hp, cst [2h each] and gates [8h] per row; W_hh and
            // both biases of both directions
            c(
                flops,
                rows * 22.0 * h + 2.0 * (4.0 * h * h + 8.0 * h) + a("batch")?,
            )
        }
        "lstm_backward_recurrent" => {
            let (rows, h) = (a("n_rows")?, a("h")?);
            // per row and direction: W_hhᵀ·dG (8h²) and ~20h of gate-gradient arithmetic
            let flops = 2.0 * rows * (8.0 * h * h + 20.0 * h);
            // reads dout [2h], gates [8h], cst [2h]; writes dg [8h] per row; W_hh
            c(flops, rows * 20.0 * h + 8.0 * h * h + a("batch")?)
        }
        "lstm_scatter_grads" => {
            let (h, din) = (a("h")?, a("din")?);
            let n = 2.0 * (4.0 * h * din + 4.0 * h * h + 8.0 * h);
            // grads accumulated (read + write); reads dW_ih, the diagonal blocks of dW_hh and
            // the bias gradient
            c(n, 2.0 * n + 8.0 * h * din + 8.0 * h * h + 8.0 * h)
        }
        // --- attention, classifier, loss ---
        "attn_forward" => {
            let (b, rows, d) = (a("batch")?, a("batch")? * a("t_max")?, a("d")?);
            // e = tanh(w·h + b): 2d + 2; softmax: 5; ctx: 2d
            c(
                rows * (4.0 * d + 7.0),
                rows * d + d + 1.0 + 2.0 * rows + b * d + b,
            )
        }
        "attn_backward" => {
            let (b, rows, d) = (a("batch")?, a("batch")? * a("t_max")?, a("d")?);
            c(
                rows * (7.0 * d + 8.0),
                2.0 * rows * d + 3.0 * rows + b * d + d + 1.0 + b * (d + 1.0) + b,
            )
        }
        "loss_copy_slice" => c(0.0, 2.0 * a("n")?),
        "loss_bias_rows" => {
            let n = a("rows")? * a("cols")?;
            c(n, 2.0 * n + a("cols")?)
        }
        "loss_softmax_xent" => {
            let (b, k) = (a("batch")?, a("classes")?);
            c(8.0 * b * k, 2.0 * b * k + b + k * a("has_w")? + 2.0)
        }
        // --- optimizer ---
        // params, m, v read and written, grads read; ~16 operations an element
        "adam_step" => c(16.0 * a("n")?, 7.0 * a("n")?),
        "adam_sumsq_partial" => c(2.0 * a("n")?, a("n")? + grid.x as f64),
        "adam_clip_coef" => c(a("nparts")? + 4.0, a("nparts")? + 2.0),
        "adam_clip_scale" => c(a("n")?, 2.0 * a("n")? + 2.0),
        // --- generic elementwise and reductions ---
        "scale" | "relu_forward" => c(a("n")?, 2.0 * a("n")?),
        "axpy" => c(2.0 * a("n")?, 3.0 * a("n")?),
        "relu_backward" => c(a("n")?, 3.0 * a("n")?),
        "reduce_sum" | "reduce_max" => c(a("n")?, a("n")? + grid.x as f64),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernels::find;

    #[test]
    fn gemm_and_uncovered_kernels() {
        let (_, sig) = find("sgemm_nt").unwrap();
        // the launch `Device::gemm` makes: c, a, b, m, n, k, alpha, beta (buffers unused here)
        let dev = crate::device::Device::sim();
        let buf = dev.alloc_zeros::<f32>(64).unwrap();
        let args = |beta: f32| -> Vec<KernelArg> {
            vec![
                (&buf).into(),
                (&buf).into(),
                (&buf).into(),
                3i32.into(),
                5i32.into(),
                7i32.into(),
                1.0f32.into(),
                beta.into(),
            ]
        };
        let g = Dim3::from(1);
        let c0 = launch_cost(sig, g, g, &args(0.0)).unwrap();
        let c1 = launch_cost(sig, g, g, &args(1.0)).unwrap();
        // 2·3·5·7 FLOP; a 3×7, b 5×7, c 3×5 floats, c read too when β ≠ 0
        assert_eq!(c0.flops, 210.0);
        assert_eq!(c0.bytes, 4.0 * (21.0 + 35.0 + 15.0));
        assert_eq!(c1.bytes, c0.bytes + 4.0 * 15.0);
        assert_eq!(c0, Cost::gemm(3, 5, 7, 0.0));
        // the front end has its own costs; test kernels have none
        let (_, stft) = find("stft_mel_power").unwrap();
        assert!(launch_cost(stft, g, g, &[]).is_none());
    }
}
