//! The three cuDNN calls of one planned shape (forward, filter gradient, data gradient) as a
//! [`DenseConv`](super::DenseConv). Uses `plan.rs` and the device.

use super::masked::DenseConv;
use super::plan::{bind, ck, ptr, Plan};
use crate::cpu::conv::ConvShape;
use crate::device::cost::{ConvPass, Cost};
use crate::device::cuda::guarded;
use crate::device::profile;
use crate::device::{count, AsView, CudaDevice, Device, DeviceBuffer, DeviceSlice, DeviceSliceMut};
use anyhow::{bail, ensure, Context, Result};
use cudarc::cudnn::{result as cr, sys};
use std::ffi::c_void;

/// The cuDNN calls of one planned shape.
pub(super) struct CudnnDense<'a> {
    pub(super) c: &'a CudaDevice,
    pub(super) handle: sys::cudnnHandle_t,
    pub(super) plan: &'a Plan,
    pub(super) workspace: Option<&'a DeviceBuffer<f32>>,
}

impl CudnnDense<'_> {
    /// The workspace pointer for `bytes` (null for none).
    pub(super) fn ws(&self, bytes: usize, s: &ConvShape) -> Result<*mut c_void> {
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
    pub(super) fn run(
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
pub(super) const ONE: f32 = 1.0;
pub(super) const ZERO: f32 = 0.0;

pub(super) fn scalar(v: &f32) -> *const c_void {
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
