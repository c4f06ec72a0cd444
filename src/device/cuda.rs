//! The `cuda` device: the nvcc fatbins embedded by build.rs, loaded and launched through
//! cudarc's driver API, with cuBLAS SGEMM when libcublas loads. cudarc loads libcuda (and
//! cuBLAS) at run time and PANICS on first use when a library is missing, so every entry point
//! probes `is_culib_present` first and runs cudarc calls under `catch_unwind`: a machine
//! without a GPU gets an error (or `--device auto` falls back to cpu), never a panic.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};

use super::{
    kernels, ArgPack, DeviceBuffer, DeviceSlice, DeviceSliceMut, Dim3, Elem, KernelArg, Mem,
    Transpose,
};

/// Runs `f`, turning a cudarc panic (missing library symbol) into an error naming `what`.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("{what}: the CUDA library panicked: {msg}")
        }
    }
}

/// Whether libcuda, libcublas and libcudnn can be loaded.
pub fn libraries_present() -> (bool, bool, bool) {
    // SAFETY: these only try to dlopen the libraries by name.
    unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::cudnn::sys::is_culib_present(),
        )
    }
}

/// An NVIDIA GPU with the project's kernels loaded.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: Option<cudarc::cublas::CudaBlas>,
    name: String,
    cc: (i32, i32),
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel. Errors name what is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !kernels::KERNELS_COMPILED {
            bail!("{}", kernels::NVCC_STATUS);
        }
        let (cuda, cublas, _) = libraries_present();
        if !cuda {
            bail!("the CUDA driver library (libcuda) is not installed or not on the loader path: no NVIDIA driver on this machine");
        }
        guarded("opening the GPU", || {
            let count =
                CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount failed: {e}"))?;
            if ordinal as i32 >= count {
                bail!("no CUDA GPU with ordinal {ordinal} (the driver reports {count})");
            }
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| anyhow!("creating a CUDA context on GPU {ordinal}: {e}"))?;
            // One stream for everything: cudarc's cross-stream event tracking is not needed.
            // SAFETY: no other stream uses these allocations.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.default_stream();
            let name = ctx.name().map_err(|e| anyhow!("cuDeviceGetName: {e}"))?;
            let cc = ctx
                .compute_capability()
                .map_err(|e| anyhow!("compute capability: {e}"))?;
            let mut funcs = HashMap::new();
            for (file, image) in kernels::FATBINS {
                let module = ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                    .map_err(|e| {
                        anyhow!(
                            "loading kernels/{file} on {name} (sm_{}{}): {e}",
                            cc.0,
                            cc.1
                        )
                    })?;
                for k in kernels::KERNELS.iter().filter(|k| k.file == *file) {
                    let f = module
                        .load_function(k.name)
                        .map_err(|e| anyhow!("kernel '{}' in kernels/{file}: {e}", k.name))?;
                    funcs.insert(k.name, f);
                }
            }
            let blas = if cublas {
                Some(
                    cudarc::cublas::CudaBlas::new(stream.clone())
                        .map_err(|e| anyhow!("cublasCreate: {e}"))?,
                )
            } else {
                None
            };
            Ok(CudaDevice {
                ctx,
                stream,
                funcs,
                blas,
                name,
                cc,
            })
        })
    }

    pub fn describe(&self) -> String {
        let mem = self
            .ctx
            .total_mem()
            .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        format!(
            "cuda: {} (sm_{}{}{mem}), GEMM by {}, convolution by {}",
            self.name,
            self.cc.0,
            self.cc.1,
            if self.blas.is_some() {
                "cuBLAS"
            } else {
                "the sgemm kernels (cuBLAS not found)"
            },
            cudnn_status().1
        )
    }

    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// The one stream every launch, copy, cuBLAS and cuDNN call of this device runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        let s = self
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| anyhow!("cuda: allocating {n} elements: {e}"))?;
        Ok(DeviceBuffer {
            len: n,
            mem: Mem::Cuda(s),
        })
    }

    pub(crate) fn alloc_uninit<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        // SAFETY: the contents are undefined until written, but any bit pattern is a valid
        // f32/i32/u32 (Elem: Pod), so reading them early is a bug (initcheck on sim), not UB.
        let s = unsafe { self.stream.alloc::<T>(n.max(1)) }
            .map_err(|e| anyhow!("cuda: allocating {n} elements: {e}"))?;
        Ok(DeviceBuffer {
            len: n,
            mem: Mem::Cuda(s),
        })
    }

    pub(crate) fn copy_htod<T: Elem>(&self, src: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| anyhow!("cuda: copy of {} elements to the device: {e}", src.len()))
    }

    pub(crate) fn dtoh<T: Elem>(&self, src: &CudaSlice<T>, len: usize) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .clone_dtoh(&src.slice(..len))
            .map_err(|e| anyhow!("cuda: copy of {len} elements to the host: {e}"))?;
        // pageable copies complete before returning, but make the guarantee explicit
        self.synchronize()?;
        Ok(v)
    }

    pub(crate) fn memset_zero<T: Elem>(&self, dst: &mut CudaSlice<T>) -> Result<()> {
        self.stream
            .memset_zeros(dst)
            .map_err(|e| anyhow!("cuda: memset: {e}"))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("cuda: synchronize (an earlier launch may have failed): {e}"))
    }

    /// Device address of a view's first element: the allocation's address plus the offset in
    /// bytes (the view lies inside the buffer by construction).
    fn dptr<T: Elem>(&self, v: &DeviceSlice<'_, T>) -> Result<u64> {
        match &v.buffer().mem {
            Mem::Cuda(s) => {
                Ok(s.device_ptr(&self.stream).0 + (v.offset() * std::mem::size_of::<T>()) as u64)
            }
            Mem::Sim(_) => bail!("a sim buffer was passed to a cuda launch"),
        }
    }

    pub(crate) fn launch_index(
        &self,
        idx: usize,
        grid: Dim3,
        block: Dim3,
        shared: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        let name = kernels::KERNELS[idx].name;
        let f = self
            .funcs
            .get(name)
            .with_context(|| format!("kernel '{name}' not loaded"))?;
        let sig = &kernels::KERNELS[idx];
        if sig.max_dynamic_shared.is_some()
            && super::limits::needs_opt_in(sig, &format!("sm_{}{}", self.cc.0, self.cc.1), shared)
        {
            // limits::check allowed this size for a kernel that declares the opt-in
            use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )
            .map_err(|e| {
                anyhow!(
                    "kernel '{name}': opting in to {shared} bytes of dynamic shared memory: {e}"
                )
            })?;
        }
        let mut pack = ArgPack::new(args, &mut |a| match a {
            KernelArg::F32Buf(v) => self.dptr(v),
            KernelArg::I32Buf(v) => self.dptr(v),
            KernelArg::U32Buf(v) => self.dptr(v),
            _ => unreachable!("scalars are packed by ArgPack"),
        })?;
        // SAFETY: arguments checked against the kernel's signature and extents (check_launch).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
                shared,
                self.stream.cu_stream(),
                pack.as_mut_ptrs(),
            )
        }
        .map_err(|e| {
            anyhow!("cuLaunchKernel '{name}' grid {grid:?} block {block:?} shared {shared}: {e}")
        })
    }

    /// Row-major GEMM through column-major cuBLAS: C^T = op(B)^T op(A)^T, i.e. swap operands.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cublas_sgemm(
        &self,
        ta: Transpose,
        tb: Transpose,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: DeviceSlice<'_, f32>,
        b: DeviceSlice<'_, f32>,
        beta: f32,
        c: DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let blas = self.blas.as_ref().context("cuBLAS not loaded")?;
        let (opb, ldb) = if tb == Transpose::N {
            (CUBLAS_OP_N, n)
        } else {
            (CUBLAS_OP_T, k)
        };
        let (opa, lda) = if ta == Transpose::N {
            (CUBLAS_OP_N, k)
        } else {
            (CUBLAS_OP_T, m)
        };
        // c is written through its view (exclusive by construction, like the kernels' outputs)
        let (pa, pb, pc) = (self.dptr(&a)?, self.dptr(&b)?, self.dptr(&c.view)?);
        // SAFETY: sizes checked by Device::gemm against the views; pointers are live device
        // allocations plus in-bounds offsets.
        unsafe {
            cudarc::cublas::result::sgemm(
                *blas.handle(),
                opb,
                opa,
                n,
                m,
                k,
                &alpha,
                pb as *const f32,
                ldb,
                pa as *const f32,
                lda,
                &beta,
                pc as *mut f32,
                n,
            )
        }
        .map_err(|e| anyhow!("cublasSgemm (m={m} n={n} k={k}): {e:?}"))
    }
}

/// Whether the conv stages will use cuDNN on this machine (libcudnn loads and `SER_NO_CUDNN` is
/// not set), and a phrase saying by what they run.
pub fn cudnn_status() -> (bool, String) {
    if crate::engine::cudnn::disabled_by_env() {
        return (false, "our kernels (SER_NO_CUDNN is set)".into());
    }
    if !libraries_present().2 {
        return (false, "our kernels (cuDNN not found)".into());
    }
    match cudnn_version() {
        Ok(v) => (true, format!("cuDNN {v}")),
        Err(e) => (false, format!("our kernels (cuDNN did not load: {e:#})")),
    }
}

/// The loaded cuDNN's version as `major.minor.patch` (cudnnGetVersion: major·10000 + minor·100 +
/// patch from cuDNN 9 on, major·1000 + minor·100 + patch before).
pub fn cudnn_version() -> Result<String> {
    let v = guarded("cudnnGetVersion", || {
        Ok(cudarc::cudnn::result::get_version())
    })?;
    Ok(cudnn_version_string(v))
}

fn cudnn_version_string(v: usize) -> String {
    let (major, rest) = if v >= 90000 {
        (v / 10000, v % 10000)
    } else {
        (v / 1000, v % 1000)
    };
    format!("{major}.{}.{} ({v})", rest / 100, rest % 100)
}

/// Report lines about the CUDA libraries and GPU (never panics).
pub fn probe_report() -> Vec<String> {
    let (cuda, cublas, cudnn) = libraries_present();
    let yes = |b: bool| if b { "present" } else { "not found" };
    let mut v = vec![format!(
        "libcuda: {}, cuBLAS: {}, cuDNN: {}",
        yes(cuda),
        yes(cublas),
        yes(cudnn)
    )];
    if cudnn {
        match cudnn_version() {
            Ok(ver) => v.push(format!("cuDNN version: {ver}")),
            Err(e) => v.push(format!("cuDNN version: error: {e:#}")),
        }
    }
    v.push(format!(
        "convolution on cuda: {} (SER_NO_CUDNN=1 forces our kernels)",
        cudnn_status().1
    ));
    if cuda {
        let gpus = guarded("probing GPUs", || {
            let n = CudaContext::device_count().map_err(|e| anyhow!("{e}"))?;
            let mut out = Vec::new();
            for i in 0..n.max(0) as usize {
                let ctx = CudaContext::new(i).map_err(|e| anyhow!("{e}"))?;
                let (ma, mi) = ctx.compute_capability().map_err(|e| anyhow!("{e}"))?;
                let mem = ctx.total_mem().map_err(|e| anyhow!("{e}"))?;
                out.push(format!(
                    "gpu {i}: {} (sm_{ma}{mi}, {:.1} GiB)",
                    ctx.name().map_err(|e| anyhow!("{e}"))?,
                    mem as f64 / (1u64 << 30) as f64
                ));
            }
            if out.is_empty() {
                out.push("gpu: none (driver loaded, 0 devices)".into());
            }
            Ok(out)
        });
        match gpus {
            Ok(g) => v.extend(g),
            Err(e) => v.push(format!("gpu: error: {e:#}")),
        }
    } else {
        v.push("gpu: none (no NVIDIA driver)".into());
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn cudnn_version_numbers_decode() {
        // cudnn_version.h: from 9.0 major*10000 + minor*100 + patch, before major*1000 + ...
        assert_eq!(super::cudnn_version_string(90100), "9.1.0 (90100)");
        assert_eq!(super::cudnn_version_string(91002), "9.10.2 (91002)");
        assert_eq!(super::cudnn_version_string(8902), "8.9.2 (8902)");
    }
}
