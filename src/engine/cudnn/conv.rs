//! [`CudnnConv`], the cuDNN side of a `ConvScratch`: the handle, a plan per seen shape, the
//! shared workspace and masked copies, and the choice between cuDNN and our kernels. Uses
//! `plan.rs`, `dense.rs`, `masked.rs` and the device.

use super::dense::CudnnDense;
use super::masked::{masked_conv_backward, masked_conv_forward, xm_len};
use super::plan::{bind, Handle, Plan};
use super::ConvBackend;
use crate::cpu::conv::ConvShape;
use crate::device::cuda::{cudnn_disabled_by_env, guarded, libraries_present};
use crate::device::{CudaDevice, Device, DeviceBuffer, DeviceSlice, DeviceSliceMut};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::cudnn::{result as cr, sys};

/// cuDNN state of a scratch: the handle, a plan per seen shape (None: our kernels for it), one
/// workspace for all, and the masked copies of x and dy. Field order is drop order: the
/// descriptors and the handle go before `_stream`, which keeps the CUDA context alive.
pub(super) struct State {
    pub(super) plans: Vec<(ConvShape, Option<Plan>)>,
    pub(super) workspace: Option<DeviceBuffer<f32>>,
    pub(super) xm: Option<DeviceBuffer<f32>>,
    pub(super) dym: Option<DeviceBuffer<f32>>,
    pub(super) handle: Handle,
    pub(super) _stream: std::sync::Arc<cudarc::driver::CudaStream>,
}

// SAFETY: the raw cuDNN handle and descriptors are only touched through `&mut CudnnConv` (one
// thread at a time); cuDNN allows a handle to move between threads as long as it is not used
// concurrently, and every call binds the device's context to the calling thread first.
unsafe impl Send for State {}

/// The cuDNN side of a [`crate::engine::cnn::ConvScratch`] (see the module doc).
#[derive(Default)]
pub struct CudnnConv {
    pub(super) backend: ConvBackend,
    pub(super) state: Option<State>,
    /// Auto decided against cuDNN on this scratch (so it is decided once).
    pub(super) declined: bool,
}

/// Grows `buf` to at least `n` floats (allocating only if needed).
pub(super) fn grow(dev: &Device, buf: &mut Option<DeviceBuffer<f32>>, n: usize) -> Result<()> {
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

    pub(super) fn start(c: &CudaDevice) -> Result<State> {
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
    pub(super) fn parts<'a>(
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
