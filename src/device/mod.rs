//! Executor interface for the kernels in `kernels/*.cu`, with two implementations:
//! - [`SimDevice`]: the kernels compiled for the host by g++ against the CUDA shim
//!   (`kernels/sim/`), always available; this is how tests and CI execute every kernel;
//! - [`CudaDevice`]: the same kernels compiled by nvcc (fatbin embedded by build.rs), launched
//!   through cudarc's driver API (libcuda loaded at run time), cuBLAS for GEMM when it loads.
//!
//! Both take the same launch: a kernel name, grid, block, dynamic shared bytes and typed
//! [`KernelArg`]s. Every launch is checked against the signature parsed from the .cu source
//! (argument count and types) and against the kernel's declared extents (each buffer holds at
//! least the elements the kernel may touch), so a wrong launch is an error, never memory
//! corruption. The argument list is built once as cuLaunchKernel's `void** args` and handed to
//! either device.
//!
//! Adding a kernel: write `extern "C" __global__ void name(...)` on ONE line in a kernels/*.cu
//! file that includes "common.cuh"; above it, comment lines giving the launch shape and one
//! `// extent: PARAM EXPR` per pointer parameter; guard threads past the end with
//! `ser_in_bounds`. build.rs registers it for both devices; call `device.launch("name", ...)`.

pub mod cuda;
pub mod kernels;
pub mod ops;
pub mod sim;

use std::ffi::c_void;

use anyhow::{bail, ensure, Context, Result};

pub use cuda::CudaDevice;
pub use kernels::{KernelSig, ParamKind};
pub use sim::{SimDevice, SimOptions};

use crate::cli::DeviceChoice;

/// Element types a device buffer can hold.
pub trait Elem:
    Copy
    + Default
    + bytemuck::Pod
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Send
    + Sync
    + 'static
{
    /// The pointer parameter kind a buffer of this type matches.
    const PTR_KIND: ParamKind;
}
impl Elem for f32 {
    const PTR_KIND: ParamKind = ParamKind::PtrF32;
}
impl Elem for i32 {
    const PTR_KIND: ParamKind = ParamKind::PtrI32;
}
impl Elem for u32 {
    const PTR_KIND: ParamKind = ParamKind::PtrU32;
}

pub(crate) enum Mem<T: Elem> {
    Sim(sim::HostMem),
    Cuda(cudarc::driver::CudaSlice<T>),
}

/// A typed array of `len` elements in a device's memory (host memory for `sim`).
pub struct DeviceBuffer<T: Elem> {
    len: usize,
    pub(crate) mem: Mem<T>,
}

impl<T: Elem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Grid or block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}
impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Dim3 { x, y: 1, z: 1 }
    }
}
impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Dim3 { x, y, z: 1 }
    }
}
impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3 { x, y, z }
    }
}

/// Blocks needed to cover `n` items with `block` threads each (at least 1).
pub fn blocks_for(n: usize, block: u32) -> u32 {
    (n.div_ceil(block as usize)).max(1) as u32
}

/// One kernel argument; `From` impls let call sites write `(&buf).into()`, `n.into()`.
#[derive(Clone, Copy)]
pub enum KernelArg<'a> {
    F32Buf(&'a DeviceBuffer<f32>),
    I32Buf(&'a DeviceBuffer<i32>),
    U32Buf(&'a DeviceBuffer<u32>),
    I32(i32),
    U32(u32),
    F32(f32),
    U64(u64),
}
impl<'a> From<&'a DeviceBuffer<f32>> for KernelArg<'a> {
    fn from(b: &'a DeviceBuffer<f32>) -> Self {
        KernelArg::F32Buf(b)
    }
}
impl<'a> From<&'a DeviceBuffer<i32>> for KernelArg<'a> {
    fn from(b: &'a DeviceBuffer<i32>) -> Self {
        KernelArg::I32Buf(b)
    }
}
impl<'a> From<&'a DeviceBuffer<u32>> for KernelArg<'a> {
    fn from(b: &'a DeviceBuffer<u32>) -> Self {
        KernelArg::U32Buf(b)
    }
}
impl From<i32> for KernelArg<'_> {
    fn from(v: i32) -> Self {
        KernelArg::I32(v)
    }
}
impl From<u32> for KernelArg<'_> {
    fn from(v: u32) -> Self {
        KernelArg::U32(v)
    }
}
impl From<f32> for KernelArg<'_> {
    fn from(v: f32) -> Self {
        KernelArg::F32(v)
    }
}
impl From<u64> for KernelArg<'_> {
    fn from(v: u64) -> Self {
        KernelArg::U64(v)
    }
}

impl KernelArg<'_> {
    fn kind(&self) -> ParamKind {
        match self {
            KernelArg::F32Buf(_) => ParamKind::PtrF32,
            KernelArg::I32Buf(_) => ParamKind::PtrI32,
            KernelArg::U32Buf(_) => ParamKind::PtrU32,
            KernelArg::I32(_) => ParamKind::I32,
            KernelArg::U32(_) => ParamKind::U32,
            KernelArg::F32(_) => ParamKind::F32,
            KernelArg::U64(_) => ParamKind::U64,
        }
    }
    fn buf_len(&self) -> Option<usize> {
        match self {
            KernelArg::F32Buf(b) => Some(b.len),
            KernelArg::I32Buf(b) => Some(b.len),
            KernelArg::U32Buf(b) => Some(b.len),
            _ => None,
        }
    }
    fn int_value(&self) -> Option<i128> {
        match *self {
            KernelArg::I32(v) => Some(v as i128),
            KernelArg::U32(v) => Some(v as i128),
            KernelArg::U64(v) => Some(v as i128),
            _ => None,
        }
    }
}

/// Checks a launch against the kernel's parsed signature and extents; returns the kernel's
/// index in the table.
pub fn check_launch(name: &str, grid: Dim3, block: Dim3, args: &[KernelArg]) -> Result<usize> {
    let (idx, sig) = kernels::find(name)?;
    ensure!(
        args.len() == sig.params.len(),
        "kernel '{name}' takes {} arguments ({}), got {}",
        sig.params.len(),
        sig.params
            .iter()
            .map(|p| format!("{} {}", p.ty, p.name))
            .collect::<Vec<_>>()
            .join(", "),
        args.len()
    );
    for (i, (a, p)) in args.iter().zip(sig.params).enumerate() {
        ensure!(
            a.kind() == p.kind,
            "kernel '{name}' argument {i} '{}' is declared '{}' ({:?}), got {:?}",
            p.name,
            p.ty,
            p.kind,
            a.kind()
        );
    }
    let threads = block.x as u64 * block.y as u64 * block.z as u64;
    ensure!(
        threads > 0 && threads <= 1024 && grid.x > 0 && grid.y > 0 && grid.z > 0,
        "kernel '{name}': invalid launch shape grid {grid:?} block {block:?}"
    );
    let vars = |id: &str| -> Option<i128> {
        match id {
            "grid_x" => return Some(grid.x as i128),
            "grid_y" => return Some(grid.y as i128),
            "grid_z" => return Some(grid.z as i128),
            "block_x" => return Some(block.x as i128),
            "block_y" => return Some(block.y as i128),
            "block_z" => return Some(block.z as i128),
            _ => {}
        }
        let i = sig.params.iter().position(|p| p.name == id)?;
        args[i].int_value()
    };
    for (pname, expr) in sig.extents {
        let need = kernels::eval_extent(expr, &vars).with_context(|| format!("kernel '{name}'"))?;
        let i = sig
            .params
            .iter()
            .position(|p| p.name == *pname)
            .expect("build.rs checked");
        let have = args[i].buf_len().expect("pointer argument") as i128;
        ensure!(
            need >= 0,
            "kernel '{name}': extent of '{pname}' ({expr}) is negative: {need}"
        );
        ensure!(
            have >= need,
            "kernel '{name}': buffer '{pname}' has {have} elements but the launch may touch {expr} = {need}"
        );
    }
    Ok(idx)
}

/// `void** args` storage: one 8-byte slot per argument (pointers and scalars, little-endian,
/// so a 4-byte parameter reads the low bytes), and the pointer array into it.
pub(crate) struct ArgPack {
    slots: Vec<u64>,
    ptrs: Vec<*mut c_void>,
}
impl ArgPack {
    pub(crate) fn new(
        args: &[KernelArg],
        ptr_of: &mut dyn FnMut(&KernelArg) -> Result<u64>,
    ) -> Result<Self> {
        let mut slots = Vec::with_capacity(args.len());
        for a in args {
            slots.push(match *a {
                KernelArg::I32(v) => v as u32 as u64,
                KernelArg::U32(v) => v as u64,
                KernelArg::F32(v) => v.to_bits() as u64,
                KernelArg::U64(v) => v,
                _ => ptr_of(a)?,
            });
        }
        let mut p = ArgPack {
            slots,
            ptrs: Vec::new(),
        };
        p.ptrs = p
            .slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        Ok(p)
    }
    pub(crate) fn as_mut_ptrs(&mut self) -> &mut [*mut c_void] {
        &mut self.ptrs
    }
}

/// Work a thread has asked of devices (all devices together), for launch and traffic counts:
/// kernel launches (cuBLAS GEMMs count as one), host→device and device→host bytes, and
/// allocations. Per thread, so concurrent tests do not mix their counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub launches: u64,
    pub htod_bytes: u64,
    pub dtoh_bytes: u64,
    pub allocs: u64,
    /// memset_zero calls (a driver memset on cuda, not a kernel).
    pub memsets: u64,
}

thread_local! {
    static STATS: std::cell::Cell<DeviceStats> = const {
        std::cell::Cell::new(DeviceStats { launches: 0, htod_bytes: 0, dtoh_bytes: 0, allocs: 0, memsets: 0 })
    };
}

/// This thread's counts so far (subtract two readings to measure a region).
pub fn thread_stats() -> DeviceStats {
    STATS.with(|s| s.get())
}

pub(crate) fn count(f: impl FnOnce(&mut DeviceStats)) {
    STATS.with(|s| {
        let mut v = s.get();
        f(&mut v);
        s.set(v);
    });
}

/// Whether a GEMM operand is stored transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transpose {
    N,
    T,
}

/// A device that runs the kernels.
pub enum Device {
    Sim(SimDevice),
    Cuda(CudaDevice),
}

impl Device {
    /// A sim device with the global default options.
    pub fn sim() -> Device {
        Device::Sim(SimDevice::new())
    }

    /// A short description, e.g. `sim (2 workers)` or `cuda: NVIDIA H100 (sm_90)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Sim(s) => s.describe(),
            Device::Cuda(c) => c.describe(),
        }
    }

    pub fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        count(|s| s.allocs += 1);
        match self {
            Device::Sim(_) => sim::alloc_zeros(n),
            Device::Cuda(c) => c.alloc_zeros(n),
        }
    }

    /// A new buffer holding a copy of `src`.
    pub fn htod<T: Elem>(&self, src: &[T]) -> Result<DeviceBuffer<T>> {
        let mut b = self.alloc_zeros(src.len())?;
        self.copy_htod(src, &mut b)?;
        Ok(b)
    }

    /// Copies `src` into `dst` (same length).
    pub fn copy_htod<T: Elem>(&self, src: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        ensure!(
            src.len() == dst.len,
            "copy to device: {} elements into a buffer of {}",
            src.len(),
            dst.len
        );
        count(|s| s.htod_bytes += std::mem::size_of_val(src) as u64);
        match (self, &mut dst.mem) {
            (Device::Sim(_), Mem::Sim(m)) => {
                m.as_mut_slice::<T>(dst.len).copy_from_slice(src);
                Ok(())
            }
            (Device::Cuda(c), Mem::Cuda(s)) => c.copy_htod(src, s),
            _ => bail!("buffer belongs to another device"),
        }
    }

    /// The buffer's contents.
    pub fn dtoh<T: Elem>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>> {
        count(|s| s.dtoh_bytes += (src.len * std::mem::size_of::<T>()) as u64);
        match (self, &src.mem) {
            (Device::Sim(_), Mem::Sim(m)) => Ok(m.as_slice::<T>(src.len).to_vec()),
            (Device::Cuda(c), Mem::Cuda(s)) => c.dtoh(s, src.len),
            _ => bail!("buffer belongs to another device"),
        }
    }

    /// Sets every element to zero.
    pub fn memset_zero<T: Elem>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        count(|s| s.memsets += 1);
        match (self, &mut buf.mem) {
            (Device::Sim(_), Mem::Sim(m)) => {
                m.as_mut_slice::<T>(buf.len).fill(T::default());
                Ok(())
            }
            (Device::Cuda(c), Mem::Cuda(s)) => c.memset_zero(s),
            _ => bail!("buffer belongs to another device"),
        }
    }

    /// Launches kernel `name` (checked against its signature and extents first).
    pub fn launch(
        &self,
        name: &str,
        grid: impl Into<Dim3>,
        block: impl Into<Dim3>,
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        let (grid, block) = (grid.into(), block.into());
        let idx = check_launch(name, grid, block, args)?;
        count(|s| s.launches += 1);
        match self {
            Device::Sim(s) => s.launch_index(idx, grid, block, shared_bytes, args, &s.options),
            Device::Cuda(c) => c.launch_index(idx, grid, block, shared_bytes, args),
        }
    }

    /// Waits for all queued work (launches on `sim` are synchronous).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Sim(_) => Ok(()),
            Device::Cuda(c) => c.synchronize(),
        }
    }

    /// Row-major `c (m x n) = alpha * op(a) * op(b) + beta * c`, op(a) m x k, op(b) k x n;
    /// `Transpose::T` means the operand is stored transposed (a: k x m, b: n x k). NN, NT and TN
    /// are supported. cuBLAS on cuda when it loaded, the sgemm kernels otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ta: Transpose,
        tb: Transpose,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        beta: f32,
        c: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let name = match (ta, tb) {
            (Transpose::N, Transpose::N) => "sgemm_nn",
            (Transpose::N, Transpose::T) => "sgemm_nt",
            (Transpose::T, Transpose::N) => "sgemm_tn",
            (Transpose::T, Transpose::T) => {
                bail!("gemm: TT is not supported (transpose the product instead)")
            }
        };
        let dims = |v: usize, what: &str| -> Result<i32> {
            i32::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .with_context(|| format!("gemm: {what} = {v} must be in 1..=i32::MAX"))
        };
        let (mi, ni, ki) = (dims(m, "m")?, dims(n, "n")?, dims(k, "k")?);
        ensure!(
            a.len >= m * k && b.len >= k * n && c.len >= m * n,
            "gemm: buffers too small for m={m} n={n} k={k} (a {}, b {}, c {})",
            a.len,
            b.len,
            c.len
        );
        if let Device::Cuda(cd) = self {
            if cd.has_cublas() {
                count(|s| s.launches += 1);
                return cd.cublas_sgemm(ta, tb, mi, ni, ki, alpha, a, b, beta, c);
            }
        }
        let grid = (blocks_for(n, 16), blocks_for(m, 16));
        let c: &DeviceBuffer<f32> = c;
        self.launch(
            name,
            grid,
            (16, 16),
            0,
            &[
                c.into(),
                a.into(),
                b.into(),
                mi.into(),
                ni.into(),
                ki.into(),
                alpha.into(),
                beta.into(),
            ],
        )
    }
}

/// What `select` chose.
pub enum Selected {
    Cpu,
    Device(Device),
}

/// Resolves `--device`: `cpu` and `sim` always work; `cuda` errors (never panics) naming what
/// is missing; `auto` is cuda when a GPU, the driver and the compiled kernels are all present,
/// else cpu.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    match choice {
        DeviceChoice::Cpu => Ok(Selected::Cpu),
        DeviceChoice::Sim => Ok(Selected::Device(Device::sim())),
        DeviceChoice::Cuda => Ok(Selected::Device(Device::Cuda(
            CudaDevice::new(0).context("--device cuda")?,
        ))),
        DeviceChoice::Auto => match CudaDevice::new(0) {
            Ok(c) => Ok(Selected::Device(Device::Cuda(c))),
            Err(_) => Ok(Selected::Cpu),
        },
    }
}

/// Lines for `ser-engine info`: how the kernels were built and which GPU libraries load.
pub fn device_report() -> Vec<String> {
    let mut v = vec![format!(
        "kernels: {} in kernels/*.cu",
        kernels::KERNELS.len()
    )];
    v.push(format!("nvcc: {}", kernels::NVCC_STATUS));
    v.extend(cuda::probe_report());
    v.push(format!("sim: available ({})", SimDevice::new().describe()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_never_panics_and_reports() {
        assert!(matches!(select(DeviceChoice::Cpu).unwrap(), Selected::Cpu));
        assert!(matches!(
            select(DeviceChoice::Sim).unwrap(),
            Selected::Device(Device::Sim(_))
        ));
        let has_gpu = CudaDevice::new(0).is_ok();
        match select(DeviceChoice::Auto).unwrap() {
            Selected::Cpu => assert!(!has_gpu),
            Selected::Device(d) => assert!(has_gpu && matches!(d, Device::Cuda(_))),
        }
        match select(DeviceChoice::Cuda) {
            Ok(_) => assert!(has_gpu),
            Err(e) => {
                assert!(!has_gpu);
                assert!(format!("{e:#}").contains("--device cuda"), "{e:#}");
            }
        }
        if !kernels::KERNELS_COMPILED {
            let e = CudaDevice::new(0)
                .err()
                .expect("no kernels, no cuda device");
            assert!(
                format!("{e:#}").contains("tools/install-cuda-compiler.sh"),
                "{e:#}"
            );
        }
        let r = device_report();
        for l in &r {
            eprintln!("{l}");
        }
        assert!(
            r.iter().any(|l| l.starts_with("nvcc: "))
                && r.iter().any(|l| l.starts_with("libcuda: "))
                && r.iter().any(|l| l.starts_with("sim: ")),
            "{r:?}"
        );
    }
}
