//! cuDNN's objects (RAII over the raw handles and descriptors) and the [`Plan`] of one conv
//! shape: its descriptors and the deterministic, non-tensor-core algorithms chosen from
//! cuDNN's heuristics ([`choose`]); the raw pointer of a buffer and the context binding every
//! call needs. Uses cudarc's raw cuDNN bindings and the device.

use super::{dims, i32_of};
use crate::cpu::conv::ConvShape;
use crate::device::{AsView, CudaDevice, Mem};
use anyhow::{anyhow, bail, Result};
use cudarc::cudnn::{result as cr, sys};
use cudarc::driver::DevicePtr;
use std::ffi::c_void;

// ---- cuDNN objects (RAII over the raw handles; destroy errors at drop are ignored: nothing
// can be done about them there, and the memory is released with the context anyway).

pub(super) struct Handle(pub(super) sys::cudnnHandle_t);
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate, destroyed once.
        let _ = unsafe { cr::destroy_handle(self.0) };
    }
}
pub(super) struct TensorDesc(pub(super) sys::cudnnTensorDescriptor_t);
impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_tensor_descriptor(self.0) };
    }
}
pub(super) struct FilterDesc(pub(super) sys::cudnnFilterDescriptor_t);
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_filter_descriptor(self.0) };
    }
}
pub(super) struct ConvDesc(pub(super) sys::cudnnConvolutionDescriptor_t);
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor, destroyed once.
        let _ = unsafe { cr::destroy_convolution_descriptor(self.0) };
    }
}

/// Descriptors and chosen algorithms of one conv shape.
pub(super) struct Plan {
    pub(super) x: TensorDesc,
    pub(super) y: TensorDesc,
    pub(super) w: FilterDesc,
    pub(super) conv: ConvDesc,
    pub(super) fwd: sys::cudnnConvolutionFwdAlgo_t,
    pub(super) bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    pub(super) bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    /// workspace bytes of each (forward, data, filter)
    pub(super) ws: [usize; 3],
}

/// One candidate of a `cudnnGet*Algorithm_v7` answer.
pub(super) struct Cand<A> {
    pub(super) algo: A,
    pub(super) ok: bool,
    pub(super) deterministic: bool,
    pub(super) tensor_op: bool,
    pub(super) fma: bool,
    pub(super) memory: usize,
}

/// The best-ranked candidate that succeeded, is deterministic, does not use tensor-core math
/// and fits `cap` bytes of workspace; among those, the first reported with `CUDNN_FMA_MATH`
/// (the descriptor's math type) if any, else the first reported with the default math type
/// (the launch still runs under the descriptor's FMA restriction).
pub(super) fn choose<A: Copy>(cands: impl Iterator<Item = Cand<A>>, cap: usize) -> Option<A> {
    let ok: Vec<Cand<A>> = cands
        .filter(|c| c.ok && c.deterministic && !c.tensor_op && c.memory <= cap)
        .collect();
    ok.iter().find(|c| c.fma).or(ok.first()).map(|c| c.algo)
}

pub(super) fn is_tensor_op(m: sys::cudnnMathType_t) -> bool {
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
pub(super) fn ck<T>(r: Result<T, cr::CudnnError>, call: &str, s: &ConvShape) -> Result<T> {
    r.map_err(|e| anyhow!("{call} for conv {s:?}: {e} (SER_NO_CUDNN=1 runs our kernels)"))
}

pub(super) fn tensor(s: &ConvShape, c: usize) -> Result<TensorDesc> {
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
    pub(super) fn new(h: sys::cudnnHandle_t, s: &ConvShape, cap: usize) -> Result<Option<Plan>> {
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

pub(super) fn ptr(c: &CudaDevice, b: &impl AsView<f32>) -> Result<*mut c_void> {
    let v = b.view();
    match &v.buffer().mem {
        // a view starts `offset` elements into its allocation
        Mem::Cuda(s) => Ok((s.device_ptr(c.stream()).0 + 4 * v.offset() as u64) as *mut c_void),
        Mem::Sim(_) => bail!("a sim buffer was passed to cuDNN"),
    }
}

/// Makes the device's context current on this thread (cuDNN calls use the current context).
pub(super) fn bind(c: &CudaDevice) -> Result<()> {
    c.stream()
        .context()
        .bind_to_thread()
        .map_err(|e| anyhow!("binding the CUDA context before a cuDNN call: {e}"))
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
