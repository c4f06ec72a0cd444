//! cuDNN for the convolutions of the three conv stages on the `cuda` device (forward, data
//! gradient, filter gradient), through cudarc's raw cuDNN bindings (libcudnn loaded at run time).
//! Our kernels (im2col + GEMM, kernels/conv.cu) stay the path on `sim`, on `cuda` without
//! libcudnn, with `SER_NO_CUDNN=1`, and with [`ConvBackend::Kernels`].
//!
//! # Same semantics as our kernels and `cpu::conv`
//! cuDNN convolves the whole padded `[B][C][M][T]` tensor (NCHW, zero padding k/2 in both
//! dimensions, stride 1, cross-correlation as ours, no bias). The clip-length semantics (clip b
//! reads inputs only at frames t < len_b, has outputs only there, ignores dy past its end) are
//! restored around it by three small kernels (kernels/conv.cu), see [`masked_conv_forward`] and
//! [`masked_conv_backward`]:
//! - forward: xm = x masked to each clip's frames (so cuDNN reads zeros exactly where ours reads
//!   nothing), y = cuDNN(xm, w), then `cnn_bias_mask` adds the bias at valid frames and zeroes
//!   the rest;
//! - backward: xm as above and dym = dy masked; dw += cuDNN filter gradient(xm, dym) (β = 1,
//!   accumulates like ours: with both masked, the dense sum has only the valid terms);
//!   db += `cnn_bias_grad_partial` + `reduce_chunks_acc` (reads dy at valid frames); dx = cuDNN data gradient(w, dym),
//!   then masked (0 past each clip's end, as ours).
//!
//! These compositions are written once against [`DenseConv`]; [`KernelDenseConv`] implements it
//! with our kernels, so the masking is tested on `sim` (tests/cuda_cudnn.rs) even though cuDNN
//! itself only runs on a GPU.
//!
//! # Algorithms, workspace, determinism, precision
//! Per conv shape, once (then cached in the [`super::cnn::ConvScratch`] with one shared
//! workspace and the masked-copy buffers, all grow-only, so a repeated step of a seen shape
//! allocates nothing): the algorithms come from cuDNN's heuristics
//! (`cudnnGetConvolution{Forward,BackwardData,BackwardFilter}Algorithm_v7`, which run nothing,
//! unlike `cudnnFind*`, whose timing-based choice can change from run to run). We take the first
//! (best-ranked) result that succeeded, is `CUDNN_DETERMINISTIC`, does not use tensor-core math
//! (TF32 would cost ~1e-3 relative error) and whose workspace fits the budget
//! ([`super::cnn::CnnOptions::max_col_elems`] floats, the same bound as our im2col matrix).
//! Forward algorithms are all deterministic; this excludes the atomics-based backward ones
//! (`BWD_DATA_ALGO_0`, `BWD_FILTER_ALGO_0/3`), so `--seed` runs reproduce bit for bit on one GPU
//! and cuDNN version. The descriptor's math type is `CUDNN_FMA_MATH` (plain FP32). A shape for
//! which no algorithm qualifies runs on our kernels (also deterministic).
//!
//! # Max pooling stays on our kernels
//! cuDNN's max-pool backward gives a window's gradient to one of its maxima, which one being
//! unspecified (and not promised deterministic for `CUDNN_POOLING_MAX`); the CPU reference and
//! `pool_backward` give it to the FIRST maximum in row-major order. Ties are not rare here:
//! after ReLU, all-zero windows are common (harmless: the ReLU backward zeroes those gradients
//! anyway), but positive ties are real too, because `power_to_db`'s `top_db` clamp makes
//! silent stretches of the log-Mel exactly constant, so neighbouring conv outputs there are
//! bitwise equal. `CUDNN_POOLING_MAX_DETERMINISTIC` fixes the run-to-run order but does not
//! document which maximum wins. So cuDNN pooling could route gradients differently from the
//! CPU reference; `pool_forward` / `pool_backward` (one memory-bound pass each, with the length
//! mask and dropout fused, which cuDNN would need extra passes for) remain the pooling on cuda.
//!
//! Every cuDNN call's status is checked and becomes an error naming the call and the shape;
//! cudarc panics (a missing symbol) are caught and reported the same way.

use std::ffi::c_void;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::cudnn::{result as cr, sys};
use cudarc::driver::DevicePtr;

use super::cnn::{conv2d_backward_with, conv2d_forward_with, reduce_chunks_acc, ConvScratch};
use crate::backend::memory::bias_grad_chunks;
use crate::cpu::conv::ConvShape;
use crate::device::cost::{ConvPass, Cost};
use crate::device::cuda::{cudnn_disabled_by_env, guarded, libraries_present};
use crate::device::profile;
use crate::device::{
    blocks_for, count, AsView, CudaDevice, Device, DeviceBuffer, DeviceSlice, DeviceSliceMut, Mem,
};

/// Which implementation runs the convolutions of a [`ConvScratch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvBackend {
    /// cuDNN on a cuda device where libcudnn loads and `SER_NO_CUDNN` is not set (a cuDNN
    /// that is present but fails to start gives a warning and our kernels); our kernels
    /// otherwise.
    #[default]
    Auto,
    /// Always our kernels (im2col + GEMM).
    Kernels,
    /// cuDNN; an error on sim, without libcudnn, or when it fails to start.
    Cudnn,
}

const BLOCK: u32 = 256;

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds i32"))
}

/// `[B][C][M][T]` as kernel arguments.
fn dims(batch: usize, c: usize, m: usize, t: usize) -> Result<[i32; 4]> {
    Ok([
        i32_of(batch, "batch")?,
        i32_of(c, "channels")?,
        i32_of(m, "mels")?,
        i32_of(t, "frames")?,
    ])
}

/// dst = src at each clip's frames t < lens[b], 0 elsewhere, over `[B][c][M][T]` (the first
/// B·c·M·T elements of `dst`; `dst` may be `src`).
fn time_mask(
    dev: &Device,
    dst: &DeviceBuffer<f32>,
    src: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    batch: usize,
    c: usize,
    s: &ConvShape,
) -> Result<()> {
    let [b, c, m, t] = dims(batch, c, s.m, s.t)?;
    let n = batch * c as usize * s.m * s.t;
    dev.launch(
        "cnn_time_mask",
        blocks_for(n, BLOCK).min(1 << 16),
        BLOCK,
        0,
        &[
            dst.into(),
            src.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
        ],
    )
}

/// The three length-unaware convolutions over whole NCHW tensors that cuDNN provides: zero
/// padding k/2 in both dimensions, stride 1, cross-correlation, no bias. x `[B][cin][M][T]`,
/// w `[cout][cin][k][k]`, y `[B][cout][M][T]` of shape `s` (buffers may be longer; the first
/// elements are used).
pub trait DenseConv {
    /// y = conv(x, w).
    fn forward(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()>;
    /// dw += ∂/∂w of Σ dy ⊙ conv(x, w).
    fn backward_filter_acc(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()>;
    /// dx = ∂/∂x of Σ dy ⊙ conv(x, w) (overwritten).
    fn backward_data(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()>;
}

/// Length-aware conv forward (`cpu::conv::conv2d_forward`, as `cnn::conv2d_forward`) from a
/// dense conv: y `[B][cout][M][T]` = conv(x, w) + bias at each clip's valid frames, 0 elsewhere.
/// `xm` is scratch of at least `s.x_len()` floats.
#[allow(clippy::too_many_arguments)]
pub fn masked_conv_forward(
    dev: &Device,
    dense: &mut dyn DenseConv,
    x: &DeviceBuffer<f32>,
    w: DeviceSlice<'_, f32>,
    bias: DeviceSlice<'_, f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    y: &mut DeviceBuffer<f32>,
    xm: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == s.x_len()
            && y.len() == s.y_len()
            && w.len() == s.w_len()
            && bias.len() == s.cout
            && lens.len() == s.batch
            && xm.len() >= s.x_len(),
        "masked conv forward: buffer sizes do not match {s:?}"
    );
    // zeros past each clip's end: the dense conv then reads exactly what ours reads
    time_mask(dev, xm, x, lens, s.batch, s.cin, s)?;
    dense.forward(dev, s, xm, w, y)?;
    let [b, c, m, t] = dims(s.batch, s.cout, s.m, s.t)?;
    let yr: &DeviceBuffer<f32> = y;
    dev.launch(
        "cnn_bias_mask",
        blocks_for(s.y_len(), BLOCK).min(1 << 16),
        BLOCK,
        0,
        &[
            yr.into(),
            bias.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
        ],
    )
}

/// Floats of [`masked_conv_backward`]'s `xm` scratch for `s`: the masked x, or the bias
/// gradient's `[cout][chunks]` partials when those are more.
pub fn xm_len(s: &ConvShape) -> usize {
    s.x_len()
        .max(s.cout * bias_grad_chunks(s.batch, s.cout, s.m, s.t))
}

/// Length-aware conv backward (`cpu::conv::conv2d_backward`, as `cnn::conv2d_backward`) from a
/// dense conv: dw, db ACCUMULATE; dx (if given) is overwritten (0 at t ≥ `lens[b]`); dy at
/// t ≥ `lens[b]` is ignored. `xm`, `dym`: scratch of at least [`xm_len`]`(s)` / `s.y_len()` floats
/// (xm holds the masked x, then, once the filter gradient has read it, the bias-gradient partials).
#[allow(clippy::too_many_arguments)]
pub fn masked_conv_backward(
    dev: &Device,
    dense: &mut dyn DenseConv,
    x: &DeviceBuffer<f32>,
    w: DeviceSlice<'_, f32>,
    dy: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    dx: Option<&mut DeviceBuffer<f32>>,
    dw: &mut DeviceSliceMut<'_, f32>,
    db: &mut DeviceSliceMut<'_, f32>,
    xm: &mut DeviceBuffer<f32>,
    dym: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == s.x_len()
            && dy.len() == s.y_len()
            && w.len() == s.w_len()
            && dw.len() == s.w_len()
            && db.len() == s.cout
            && lens.len() == s.batch
            && dx.as_ref().is_none_or(|d| d.len() == s.x_len())
            && xm.len() >= xm_len(s)
            && dym.len() >= s.y_len(),
        "masked conv backward: buffer sizes do not match {s:?}"
    );
    time_mask(dev, xm, x, lens, s.batch, s.cin, s)?;
    time_mask(dev, dym, dy, lens, s.batch, s.cout, s)?;
    // with x and dy both zero past each end, the dense filter gradient sums only valid terms
    dense.backward_filter_acc(dev, s, xm, dym, dw)?;
    // db: a (channel x chunk) grid of partials in xm (free now), then a fixed-order pass 2
    let [b, c, m, t] = dims(s.batch, s.cout, s.m, s.t)?;
    let chunks = bias_grad_chunks(s.batch, s.cout, s.m, s.t);
    let partial = xm.slice(0..s.cout * chunks)?;
    dev.launch(
        "cnn_bias_grad_partial",
        (s.cout as u32, chunks as u32),
        BLOCK,
        0,
        &[
            partial.into(),
            dy.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
            i32::try_from(chunks)?.into(),
        ],
    )?;
    reduce_chunks_acc(dev, db.view(), partial, s.cout, chunks)?;
    if let Some(dx) = dx {
        // valid dx sums only valid outputs (dym is 0 elsewhere); then 0 past each end
        dense.backward_data(dev, s, w, dym, dx)?;
        let dxr: &DeviceBuffer<f32> = dx;
        time_mask(dev, dxr, dxr, lens, s.batch, s.cin, s)?;
    }
    Ok(())
}

/// Our kernels as a [`DenseConv`] (every clip at full length, zero bias): the stand-in for
/// cuDNN that lets the masking of [`masked_conv_forward`] / [`masked_conv_backward`] be tested
/// on `sim`. Allocates its own buffers (tests and one-off use).
pub struct KernelDenseConv {
    s: ConvShape,
    full: DeviceBuffer<i32>,
    zero_bias: DeviceBuffer<f32>,
    dummy_x: DeviceBuffer<f32>,
    dummy_w: DeviceBuffer<f32>,
    dummy_b: DeviceBuffer<f32>,
    scratch: ConvScratch,
    max_col: usize,
}

impl KernelDenseConv {
    /// For convolutions of shape `s`, im2col chunks of at most `max_col` elements.
    pub fn new(dev: &Device, s: &ConvShape, max_col: usize) -> Result<Self> {
        let full = dev.htod(&vec![i32_of(s.t, "frames")?; s.batch])?;
        let mut scratch = ConvScratch::with_backend(ConvBackend::Kernels);
        scratch.reserve(dev, &[*s], max_col)?;
        Ok(KernelDenseConv {
            s: *s,
            full,
            zero_bias: dev.alloc_zeros(s.cout)?,
            dummy_x: dev.alloc_zeros(s.x_len())?,
            dummy_w: dev.alloc_zeros(s.w_len())?,
            dummy_b: dev.alloc_zeros(s.cout)?,
            scratch,
            max_col,
        })
    }
    fn check(&self, s: &ConvShape) -> Result<()> {
        ensure!(
            *s == self.s,
            "KernelDenseConv made for {:?}, called for {s:?}",
            self.s
        );
        Ok(())
    }
}

/// The first `n` elements of `b`, exactly (our kernels check exact sizes).
fn exact(b: &DeviceBuffer<f32>, n: usize, what: &str) -> Result<()> {
    ensure!(
        b.len() == n,
        "KernelDenseConv: {what} has {} elements, the shape {n}",
        b.len()
    );
    Ok(())
}

impl DenseConv for KernelDenseConv {
    fn forward(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(x, s.x_len(), "x")?;
        conv2d_forward_with(
            dev,
            x,
            &w,
            &self.zero_bias,
            &self.full,
            s,
            y,
            self.max_col,
            &mut self.scratch,
        )
    }
    fn backward_filter_acc(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(x, s.x_len(), "x")?;
        exact(dy, s.y_len(), "dy")?;
        conv2d_backward_with(
            dev,
            x,
            &self.dummy_w,
            dy,
            &self.full,
            s,
            None,
            dw,
            &mut self.dummy_b,
            self.max_col,
            &mut self.scratch,
        )
    }
    fn backward_data(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(dy, s.y_len(), "dy")?;
        conv2d_backward_with(
            dev,
            &self.dummy_x,
            &w,
            dy,
            &self.full,
            s,
            Some(dx),
            &mut self.dummy_w,
            &mut self.dummy_b,
            self.max_col,
            &mut self.scratch,
        )
    }
}

// ---- cuDNN objects (RAII over the raw handles; destroy errors at drop are ignored: nothing
// can be done about them there, and the memory is released with the context anyway).

struct Handle(sys::cudnnHandle_t);
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate, destroyed once.
        let _ = unsafe { cr::destroy_handle(self.0) };
    }
}
struct TensorDesc(sys::cudnnTensorDescriptor_t);
impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_tensor_descriptor(self.0) };
    }
}
struct FilterDesc(sys::cudnnFilterDescriptor_t);
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_filter_descriptor(self.0) };
    }
}
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_convolution_descriptor(self.0) };
    }
}

/// Descriptors and chosen algorithms of one conv shape.
struct Plan {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    fwd: sys::cudnnConvolutionFwdAlgo_t,
    bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    /// workspace bytes of each (forward, data, filter)
    ws: [usize; 3],
}

/// One candidate of a `cudnnGet*Algorithm_v7` answer.
struct Cand<A> {
    algo: A,
    ok: bool,
    deterministic: bool,
    tensor_op: bool,
    fma: bool,
    memory: usize,
}

/// The best-ranked candidate that succeeded, is deterministic, does not use tensor-core math
/// and fits `cap` bytes of workspace; among those, the first reported with `CUDNN_FMA_MATH`
/// (the descriptor's math type) if any, else the first reported with the default math type
/// (the launch still runs under the descriptor's FMA restriction).
fn choose<A: Copy>(cands: impl Iterator<Item = Cand<A>>, cap: usize) -> Option<A> {
    let ok: Vec<Cand<A>> = cands
        .filter(|c| c.ok && c.deterministic && !c.tensor_op && c.memory <= cap)
        .collect();
    ok.iter().find(|c| c.fma).or(ok.first()).map(|c| c.algo)
}

fn is_tensor_op(m: sys::cudnnMathType_t) -> bool {
    matches!(
        m,
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
    )
}

macro_rules! cands {
    ($perf:expr, $n:expr) => {
        $perf[..$n].iter().map(|p| Cand {
            algo: p.algo,
            ok: p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
            deterministic: p.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC,
            tensor_op: is_tensor_op(p.mathType),
            fma: p.mathType == sys::cudnnMathType_t::CUDNN_FMA_MATH,
            memory: p.memory,
        })
    };
}

/// Turns a cuDNN status into an error naming the call and the shape.
fn ck<T>(r: Result<T, cr::CudnnError>, call: &str, s: &ConvShape) -> Result<T> {
    r.map_err(|e| anyhow!("{call} for conv {s:?}: {e} (SER_NO_CUDNN=1 runs our kernels)"))
}

fn tensor(s: &ConvShape, c: usize) -> Result<TensorDesc> {
    let d = TensorDesc(ck(
        cr::create_tensor_descriptor(),
        "cudnnCreateTensorDescriptor",
        s,
    )?);
    // SAFETY: a live descriptor; NCHW float [B][c][M][T].
    ck(
        unsafe {
            cr::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims(s.batch, c, s.m, s.t)?,
            )
        },
        "cudnnSetTensor4dDescriptor",
        s,
    )?;
    Ok(d)
}

impl Plan {
    /// Descriptors of `s` and its algorithms; None when some direction has no deterministic,
    /// FP32 algorithm whose workspace fits `cap` bytes.
    fn new(h: sys::cudnnHandle_t, s: &ConvShape, cap: usize) -> Result<Option<Plan>> {
        let x = tensor(s, s.cin)?;
        let y = tensor(s, s.cout)?;
        let w = FilterDesc(ck(
            cr::create_filter_descriptor(),
            "cudnnCreateFilterDescriptor",
            s,
        )?);
        let k = i32_of(s.k, "kernel")?;
        // SAFETY: a live descriptor; float [cout][cin][k][k].
        ck(
            unsafe {
                cr::set_filter4d_descriptor(
                    w.0,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    [i32_of(s.cout, "cout")?, i32_of(s.cin, "cin")?, k, k],
                )
            },
            "cudnnSetFilter4dDescriptor",
            s,
        )?;
        let conv = ConvDesc(ck(
            cr::create_convolution_descriptor(),
            "cudnnCreateConvolutionDescriptor",
            s,
        )?);
        // SAFETY: a live descriptor. Cross-correlation (no kernel flip) is what ours computes.
        ck(
            unsafe {
                cr::set_convolution2d_descriptor(
                    conv.0,
                    k / 2,
                    k / 2,
                    1,
                    1,
                    1,
                    1,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                )
            },
            "cudnnSetConvolution2dDescriptor",
            s,
        )?;
        // SAFETY: a live descriptor. FMA math: no TF32 tensor cores (the default allows them on
        // Ampere and later).
        ck(
            unsafe { cr::set_convolution_math_type(conv.0, sys::cudnnMathType_t::CUDNN_FMA_MATH) },
            "cudnnSetConvolutionMathType(CUDNN_FMA_MATH)",
            s,
        )?;

        const NF: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
        const ND: usize =
            sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize;
        const NW: usize =
            sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize;
        // SAFETY (the three queries): live handle and descriptors; `perf` holds `N` entries and
        // cuDNN writes at most the requested count, reporting how many in `n` (all-zero bytes
        // are a valid value of every field: algorithm 0, success, non-deterministic, default).
        let mut n = 0;
        let mut pf: [sys::cudnnConvolutionFwdAlgoPerf_t; NF] = unsafe { std::mem::zeroed() };
        ck(
            unsafe {
                cr::get_convolution_forward_algorithm(
                    h,
                    x.0,
                    w.0,
                    conv.0,
                    y.0,
                    NF as i32,
                    &mut n,
                    pf.as_mut_ptr(),
                )
            },
            "cudnnGetConvolutionForwardAlgorithm_v7",
            s,
        )?;
        let fwd = choose(cands!(pf, (n.max(0) as usize).min(NF)), cap);
        let mut pd: [sys::cudnnConvolutionBwdDataAlgoPerf_t; ND] = unsafe { std::mem::zeroed() };
        n = 0;
        ck(
            unsafe {
                cr::get_convolution_backward_data_algorithm(
                    h,
                    w.0,
                    y.0,
                    conv.0,
                    x.0,
                    ND as i32,
                    &mut n,
                    pd.as_mut_ptr(),
                )
            },
            "cudnnGetConvolutionBackwardDataAlgorithm_v7",
            s,
        )?;
        let bwd_data = choose(cands!(pd, (n.max(0) as usize).min(ND)), cap);
        let mut pw: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; NW] = unsafe { std::mem::zeroed() };
        n = 0;
        ck(
            unsafe {
                cr::get_convolution_backward_filter_algorithm(
                    h,
                    x.0,
                    y.0,
                    conv.0,
                    w.0,
                    NW as i32,
                    &mut n,
                    pw.as_mut_ptr(),
                )
            },
            "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
            s,
        )?;
        let bwd_filter = choose(cands!(pw, (n.max(0) as usize).min(NW)), cap);
        let (Some(fwd), Some(bwd_data), Some(bwd_filter)) = (fwd, bwd_data, bwd_filter) else {
            return Ok(None);
        };
        // the exact sizes (the perf entries' `memory` is what the heuristic expected)
        // SAFETY: live handle and descriptors.
        let ws = unsafe {
            [
                ck(
                    cr::get_convolution_forward_workspace_size(h, x.0, w.0, conv.0, y.0, fwd),
                    "cudnnGetConvolutionForwardWorkspaceSize",
                    s,
                )?,
                ck(
                    cr::get_convolution_backward_data_workspace_size(
                        h, w.0, y.0, conv.0, x.0, bwd_data,
                    ),
                    "cudnnGetConvolutionBackwardDataWorkspaceSize",
                    s,
                )?,
                ck(
                    cr::get_convolution_backward_filter_workspace_size(
                        h, x.0, y.0, conv.0, w.0, bwd_filter,
                    ),
                    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
                    s,
                )?,
            ]
        };
        if ws.iter().any(|&b| b > cap) {
            return Ok(None);
        }
        Ok(Some(Plan {
            x,
            y,
            w,
            conv,
            fwd,
            bwd_data,
            bwd_filter,
            ws,
        }))
    }
}

/// cuDNN state of a scratch: the handle, a plan per seen shape (None: our kernels for it), one
/// workspace for all, and the masked copies of x and dy. Field order is drop order: the
/// descriptors and the handle go before `_stream`, which keeps the CUDA context alive.
struct State {
    plans: Vec<(ConvShape, Option<Plan>)>,
    workspace: Option<DeviceBuffer<f32>>,
    xm: Option<DeviceBuffer<f32>>,
    dym: Option<DeviceBuffer<f32>>,
    handle: Handle,
    _stream: std::sync::Arc<cudarc::driver::CudaStream>,
}

// SAFETY: the raw cuDNN handle and descriptors are only touched through `&mut CudnnConv` (one
// thread at a time); cuDNN allows a handle to move between threads as long as it is not used
// concurrently, and every call binds the device's context to the calling thread first.
unsafe impl Send for State {}

/// The cuDNN side of a [`ConvScratch`] (see the module doc).
#[derive(Default)]
pub struct CudnnConv {
    backend: ConvBackend,
    state: Option<State>,
    /// Auto decided against cuDNN on this scratch (so it is decided once).
    declined: bool,
}

fn ptr(c: &CudaDevice, b: &impl AsView<f32>) -> Result<*mut c_void> {
    let v = b.view();
    match &v.buffer().mem {
        // a view starts `offset` elements into its allocation
        Mem::Cuda(s) => Ok((s.device_ptr(c.stream()).0 + 4 * v.offset() as u64) as *mut c_void),
        Mem::Sim(_) => bail!("a sim buffer was passed to cuDNN"),
    }
}

/// Grows `buf` to at least `n` floats (allocating only if needed).
fn grow(dev: &Device, buf: &mut Option<DeviceBuffer<f32>>, n: usize) -> Result<()> {
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        *buf = None; // free the old one before allocating the larger one
        *buf = Some(dev.alloc_zeros(n.max(1))?);
    }
    Ok(())
}

impl CudnnConv {
    pub fn new(backend: ConvBackend) -> Self {
        CudnnConv {
            backend,
            state: None,
            declined: false,
        }
    }

    pub fn backend(&self) -> ConvBackend {
        self.backend
    }

    /// Makes the plans of `shapes` (once per shape) and grows the workspace and masked copies
    /// to fit them; returns the shapes our kernels must run (all of them when cuDNN is not
    /// used). `max_col` floats bound the workspace, as they bound our im2col matrix.
    pub fn reserve(
        &mut self,
        dev: &Device,
        shapes: &[ConvShape],
        max_col: usize,
    ) -> Result<Vec<ConvShape>> {
        let c = match (self.backend, dev) {
            (ConvBackend::Kernels, _) => return Ok(shapes.to_vec()),
            (ConvBackend::Cudnn, Device::Sim(_)) => {
                bail!("cuDNN convolution was requested on the sim device")
            }
            (ConvBackend::Auto, Device::Sim(_)) => return Ok(shapes.to_vec()),
            (_, Device::Cuda(c)) => c,
        };
        if self.state.is_none() {
            if self.declined {
                return Ok(shapes.to_vec());
            }
            let auto = self.backend == ConvBackend::Auto;
            if auto && (cudnn_disabled_by_env() || !libraries_present().2) {
                self.declined = true;
                return Ok(shapes.to_vec());
            }
            ensure!(
                libraries_present().2,
                "cuDNN convolution was requested but libcudnn is not installed or not on the loader path"
            );
            match Self::start(c) {
                Ok(st) => self.state = Some(st),
                Err(e) if auto => {
                    eprintln!("warning: cuDNN did not start ({e:#}); convolutions use our kernels");
                    self.declined = true;
                    return Ok(shapes.to_vec());
                }
                Err(e) => return Err(e),
            }
        }
        let st = self.state.as_mut().expect("set above");
        let cap = max_col.saturating_mul(4);
        for s in shapes {
            if !st.plans.iter().any(|(p, _)| p == s) {
                bind(c).with_context(|| format!("conv {s:?}"))?;
                let h = st.handle.0;
                let plan = guarded("choosing cuDNN algorithms", || Plan::new(h, s, cap))?;
                st.plans.push((*s, plan));
            }
        }
        let (mut ws, mut nx, mut ny) = (0usize, 0usize, 0usize);
        let mut ours = Vec::new();
        for s in shapes {
            match st
                .plans
                .iter()
                .find(|(p, _)| p == s)
                .and_then(|(_, p)| p.as_ref())
            {
                Some(p) => {
                    ws = ws.max(p.ws.into_iter().max().unwrap_or(0));
                    nx = nx.max(xm_len(s));
                    ny = ny.max(s.y_len());
                }
                None => ours.push(*s),
            }
        }
        grow(dev, &mut st.workspace, ws.div_ceil(4))?;
        grow(dev, &mut st.xm, nx)?;
        grow(dev, &mut st.dym, ny)?;
        Ok(ours)
    }

    fn start(c: &CudaDevice) -> Result<State> {
        bind(c)?;
        guarded("starting cuDNN", || {
            let v = cr::get_version();
            ensure!(
                v >= crate::device::cuda::CUDNN_MIN,
                "{}",
                crate::device::cuda::cudnn_too_old(v)
            );
            let handle = Handle(
                cr::create_handle()
                    .map_err(|e| anyhow!("cudnnCreate: {e} (SER_NO_CUDNN=1 runs our kernels)"))?,
            );
            // SAFETY: a live handle and the device's live stream.
            unsafe { cr::set_stream(handle.0, c.stream().cu_stream() as sys::cudaStream_t) }
                .map_err(|e| anyhow!("cudnnSetStream: {e}"))?;
            Ok(State {
                plans: Vec::new(),
                workspace: None,
                xm: None,
                dym: None,
                handle,
                _stream: c.stream().clone(),
            })
        })
    }

    /// Whether convolutions of shape `s` run through cuDNN (after [`Self::reserve`]).
    pub fn covers(&self, s: &ConvShape) -> bool {
        self.state
            .as_ref()
            .is_some_and(|st| st.plans.iter().any(|(p, plan)| p == s && plan.is_some()))
    }

    /// Splits the state into the dense conv of `s` and the two masked-copy buffers.
    fn parts<'a>(
        &'a mut self,
        dev: &'a Device,
        s: &ConvShape,
    ) -> Result<(
        CudnnDense<'a>,
        &'a mut DeviceBuffer<f32>,
        &'a mut DeviceBuffer<f32>,
    )> {
        let Device::Cuda(c) = dev else {
            bail!("cuDNN convolution on a non-cuda device");
        };
        let st = self
            .state
            .as_mut()
            .with_context(|| format!("cuDNN not started for conv {s:?}"))?;
        let plan = st
            .plans
            .iter()
            .find(|(p, _)| p == s)
            .and_then(|(_, p)| p.as_ref())
            .with_context(|| format!("no cuDNN plan for conv {s:?} (reserve it first)"))?;
        let (xm, dym) = match (st.xm.as_mut(), st.dym.as_mut()) {
            (Some(a), Some(b)) if a.len() >= xm_len(s) && b.len() >= s.y_len() => (a, b),
            _ => bail!("cuDNN scratch not reserved for conv {s:?}"),
        };
        Ok((
            CudnnDense {
                c,
                handle: st.handle.0,
                plan,
                workspace: st.workspace.as_ref(),
            },
            xm,
            dym,
        ))
    }

    /// [`super::cnn::conv2d_forward_with`] through cuDNN (`covers(s)` must hold).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        dev: &Device,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        bias: DeviceSlice<'_, f32>,
        lens: &DeviceBuffer<i32>,
        s: &ConvShape,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let (mut dense, xm, _) = self.parts(dev, s)?;
        masked_conv_forward(dev, &mut dense, x, w, bias, lens, s, y, xm)
    }

    /// [`super::cnn::conv2d_backward_with`] through cuDNN (`covers(s)` must hold).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        dev: &Device,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        lens: &DeviceBuffer<i32>,
        s: &ConvShape,
        dx: Option<&mut DeviceBuffer<f32>>,
        dw: &mut DeviceSliceMut<'_, f32>,
        db: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        let (mut dense, xm, dym) = self.parts(dev, s)?;
        masked_conv_backward(dev, &mut dense, x, w, dy, lens, s, dx, dw, db, xm, dym)
    }
}

/// Makes the device's context current on this thread (cuDNN calls use the current context).
fn bind(c: &CudaDevice) -> Result<()> {
    c.stream()
        .context()
        .bind_to_thread()
        .map_err(|e| anyhow!("binding the CUDA context before a cuDNN call: {e}"))
}

/// The cuDNN calls of one planned shape.
struct CudnnDense<'a> {
    c: &'a CudaDevice,
    handle: sys::cudnnHandle_t,
    plan: &'a Plan,
    workspace: Option<&'a DeviceBuffer<f32>>,
}

impl CudnnDense<'_> {
    /// The workspace pointer for `bytes` (null for none).
    fn ws(&self, bytes: usize, s: &ConvShape) -> Result<*mut c_void> {
        if bytes == 0 {
            return Ok(std::ptr::null_mut());
        }
        match self.workspace {
            Some(b) if b.len() * 4 >= bytes => ptr(self.c, b),
            _ => bail!("cuDNN workspace of {bytes} bytes not reserved for conv {s:?}"),
        }
    }
    /// One cuDNN convolution call of `pass`: checks the three operands' sizes, binds the
    /// context, resolves their pointers (in the order given) and the pass's workspace, counts
    /// the launch and profiles it; `call(handle, plan, pointers, workspace, bytes)` makes the
    /// cuDNN call itself.
    fn run(
        &self,
        dev: &Device,
        s: &ConvShape,
        pass: ConvPass,
        operands: [(DeviceSlice<'_, f32>, usize, &str); 3],
        call: impl FnOnce(
            sys::cudnnHandle_t,
            &Plan,
            [*mut c_void; 3],
            *mut c_void,
            usize,
        ) -> Result<(), cr::CudnnError>,
    ) -> Result<()> {
        for (b, n, what) in &operands {
            ensure!(
                b.len() >= *n,
                "cuDNN conv {s:?}: {what} has {} elements, needs {n}",
                b.len()
            );
        }
        bind(self.c).with_context(|| format!("conv {s:?}"))?;
        let mut ptrs = [std::ptr::null_mut(); 3];
        for (p, (b, _, _)) in ptrs.iter_mut().zip(&operands) {
            *p = ptr(self.c, b)?;
        }
        let p = self.plan;
        let (ws_slot, op, function, algo) = match pass {
            ConvPass::Forward => (
                0,
                "cudnn_conv_forward",
                "cudnnConvolutionForward",
                format!("{:?}", p.fwd),
            ),
            ConvPass::BackwardData => (
                1,
                "cudnn_conv_backward_data",
                "cudnnConvolutionBackwardData",
                format!("{:?}", p.bwd_data),
            ),
            ConvPass::BackwardFilter => (
                2,
                "cudnn_conv_backward_filter",
                "cudnnConvolutionBackwardFilter",
                format!("{:?}", p.bwd_filter),
            ),
        };
        let bytes = p.ws[ws_slot];
        let pws = self.ws(bytes, s)?;
        count(|st| st.launches += 1);
        let cost = || Some(Cost::conv(pass, s.batch, s.cin, s.cout, s.m, s.t, s.k));
        profile::op(dev, op, cost, || {
            guarded(function, || {
                ck(
                    call(self.handle, p, ptrs, pws, bytes),
                    &format!("{function} (algo {algo})"),
                    s,
                )
            })
        })
    }
}

/// α for every call; β = 0 overwrites the output, β = 1 accumulates into it.
const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn scalar(v: &f32) -> *const c_void {
    v as *const f32 as *const c_void
}

// SAFETY (all three calls): `run` checked that every buffer holds at least the elements the
// plan's descriptors describe; the pointers are live device allocations on the handle's
// stream and the workspace is the one sized for this pass when the plan was made.
impl DenseConv for CudnnDense<'_> {
    fn forward(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let operands = [
            (x.view(), s.x_len(), "x"),
            (w.view(), s.w_len(), "w"),
            (y.view(), s.y_len(), "y"),
        ];
        self.run(
            dev,
            s,
            ConvPass::Forward,
            operands,
            |h, p, [px, pw, py], ws, bytes| unsafe {
                cr::convolution_forward(
                    h,
                    scalar(&ONE),
                    p.x.0,
                    px,
                    p.w.0,
                    pw,
                    p.conv.0,
                    p.fwd,
                    ws,
                    bytes,
                    scalar(&ZERO),
                    p.y.0,
                    py,
                )
            },
        )
    }

    fn backward_filter_acc(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        let operands = [
            (x.view(), s.x_len(), "x"),
            (dy.view(), s.y_len(), "dy"),
            (dw.view(), s.w_len(), "dw"),
        ];
        let pass = ConvPass::BackwardFilter;
        self.run(
            dev,
            s,
            pass,
            operands,
            |h, p, [px, pdy, pdw], ws, bytes| unsafe {
                cr::convolution_backward_filter(
                    h,
                    scalar(&ONE),
                    p.x.0,
                    px,
                    p.y.0,
                    pdy,
                    p.conv.0,
                    p.bwd_filter,
                    ws,
                    bytes,
                    // accumulate into dw like our kernels and the CPU reference
                    scalar(&ONE),
                    p.w.0,
                    pdw,
                )
            },
        )
    }

    fn backward_data(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let operands = [
            (w.view(), s.w_len(), "w"),
            (dy.view(), s.y_len(), "dy"),
            (dx.view(), s.x_len(), "dx"),
        ];
        let pass = ConvPass::BackwardData;
        self.run(
            dev,
            s,
            pass,
            operands,
            |h, p, [pw, pdy, pdx], ws, bytes| unsafe {
                cr::convolution_backward_data(
                    h,
                    scalar(&ONE),
                    p.w.0,
                    pw,
                    p.y.0,
                    pdy,
                    p.conv.0,
                    p.bwd_data,
                    ws,
                    bytes,
                    scalar(&ZERO),
                    p.x.0,
                    pdx,
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(
        algo: u32,
        deterministic: bool,
        tensor_op: bool,
        fma: bool,
        memory: usize,
    ) -> Cand<u32> {
        Cand {
            algo,
            ok: true,
            deterministic,
            tensor_op,
            fma,
            memory,
        }
    }

    #[test]
    fn choose_keeps_rank_and_excludes_nondeterministic_tensor_core_and_oversized() {
        let c = || {
            vec![
                cand(0, false, false, true, 0),  // fastest, atomics: excluded
                cand(1, true, true, false, 0),   // TF32: excluded
                cand(2, true, false, false, 99), // too much workspace for cap 50
                cand(3, true, false, false, 10), // default math
                cand(4, true, false, true, 10),  // FMA: preferred over 3
                cand(5, true, false, true, 0),
            ]
        };
        assert_eq!(choose(c().into_iter(), 50), Some(4));
        assert_eq!(choose(c().into_iter(), 100), Some(4));
        // without an FMA-reported one, the best-ranked default-math one
        let no_fma = c().into_iter().filter(|c| !c.fma);
        assert_eq!(choose(no_fma, 1000), Some(2));
        // a failed status never qualifies; nothing left gives None (our kernels)
        let mut failed = cand(7, true, false, true, 0);
        failed.ok = false;
        assert_eq!(choose(std::iter::once(failed), 100), None);
        assert_eq!(choose(c().into_iter().take(2), 100), None);
    }
}
