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
//! A pointer argument (and a GEMM operand) is a [`DeviceSlice`]: a whole [`DeviceBuffer`] or a
//! range of one (`buf.slice(a..b)?`, mutable: `buf.slice_mut(..)`, several disjoint mutable
//! ranges at once: `buf.split_mut(&[..])`). The kernel gets the buffer's address plus the
//! offset, and the extent check uses the view's own length, so a kernel cannot reach past the
//! end of its view; a range past the buffer's end is an error when the view is made. This is
//! how the engine reads parameters from and writes gradients into the flat buffers without
//! per-tensor copies.
//!
//! Profiling: [`profile::start`] makes this thread's launches, GEMMs and cuDNN convolutions
//! synchronous and records each with its time and its analytic FLOP / minimum DRAM bytes
//! ([`cost`]); [`profile::start_cost_only`] records the costs without executing anything. Off,
//! the launch path only reads a thread-local flag.
//!
//! Adding a kernel: write `extern "C" __global__ void name(...)` on ONE line in a kernels/*.cu
//! file that includes "common.cuh"; above it, comment lines giving the launch shape and one
//! `// extent: PARAM EXPR` per pointer parameter; guard threads past the end with
//! `ser_in_bounds`. build.rs registers it for both devices; call `device.launch("name", ...)`.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

pub mod cost;
pub mod cuda;
pub mod kernels;
pub mod limits;
pub mod ops;
pub mod profile;
pub mod sim;

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

pub use cuda::CudaDevice;
pub use kernels::{KernelSig, ParamKind};
pub use sim::{SimDevice, SimOptions};

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
    /// A view of this element type as a kernel argument.
    fn kernel_arg(v: DeviceSlice<'_, Self>) -> KernelArg<'_>;
}
impl Elem for f32 {
    const PTR_KIND: ParamKind = ParamKind::PtrF32;
    fn kernel_arg(v: DeviceSlice<'_, Self>) -> KernelArg<'_> {
        KernelArg::F32Buf(v)
    }
}
impl Elem for i32 {
    const PTR_KIND: ParamKind = ParamKind::PtrI32;
    fn kernel_arg(v: DeviceSlice<'_, Self>) -> KernelArg<'_> {
        KernelArg::I32Buf(v)
    }
}
impl Elem for u32 {
    const PTR_KIND: ParamKind = ParamKind::PtrU32;
    fn kernel_arg(v: DeviceSlice<'_, Self>) -> KernelArg<'_> {
        KernelArg::U32Buf(v)
    }
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

    /// The whole buffer as a view.
    pub fn view(&self) -> DeviceSlice<'_, T> {
        DeviceSlice {
            buf: self,
            off: 0,
            len: self.len,
        }
    }

    /// Elements `r` of the buffer; an error (not a panic) when `r` is not inside `0..len`.
    pub fn slice(&self, r: Range<usize>) -> Result<DeviceSlice<'_, T>> {
        self.view().slice(r)
    }

    /// Elements `r` of the buffer, for writing.
    pub fn slice_mut(&mut self, r: Range<usize>) -> Result<DeviceSliceMut<'_, T>> {
        Ok(DeviceSliceMut {
            view: self.view().slice(r)?,
            _excl: PhantomData,
        })
    }

    /// One mutable view per range (in the order given); the ranges must lie inside the buffer
    /// and not overlap, so each view is the only access to its elements.
    pub fn split_mut(&mut self, ranges: &[Range<usize>]) -> Result<Vec<DeviceSliceMut<'_, T>>> {
        let mut sorted: Vec<&Range<usize>> = ranges.iter().collect();
        sorted.sort_by_key(|r| (r.start, r.end));
        for w in sorted.windows(2) {
            ensure!(
                w[0].end <= w[1].start || w[0].is_empty() || w[1].is_empty(),
                "split_mut: ranges {:?} and {:?} overlap",
                w[0],
                w[1]
            );
        }
        let all = self.view();
        ranges
            .iter()
            .map(|r| {
                Ok(DeviceSliceMut {
                    view: all.slice(r.clone())?,
                    _excl: PhantomData,
                })
            })
            .collect()
    }
}

/// `len` elements of a [`DeviceBuffer`] from element `off`: what a kernel pointer argument or
/// a GEMM operand refers to. Launch checks use the view's length, not the buffer's.
pub struct DeviceSlice<'a, T: Elem> {
    buf: &'a DeviceBuffer<T>,
    off: usize,
    len: usize,
}
impl<T: Elem> Clone for DeviceSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Elem> Copy for DeviceSlice<'_, T> {}

impl<'a, T: Elem> DeviceSlice<'a, T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// First element of the view in its buffer.
    pub fn offset(&self) -> usize {
        self.off
    }
    /// Elements `r` of this view (relative to its start); an error when `r` is not inside
    /// `0..len`.
    pub fn slice(&self, r: Range<usize>) -> Result<DeviceSlice<'a, T>> {
        ensure!(
            r.start <= r.end && r.end <= self.len,
            "view {}..{} is outside a device buffer (view) of {} elements",
            r.start,
            r.end,
            self.len
        );
        Ok(DeviceSlice {
            buf: self.buf,
            off: self.off + r.start,
            len: r.end - r.start,
        })
    }
    pub(crate) fn buffer(&self) -> &'a DeviceBuffer<T> {
        self.buf
    }
}

/// A [`DeviceSlice`] made from an exclusive borrow of its buffer (`slice_mut`, `split_mut`):
/// nothing else can read or write these elements while it lives. Kernels write through it
/// (as through `&mut DeviceBuffer`).
pub struct DeviceSliceMut<'a, T: Elem> {
    view: DeviceSlice<'a, T>,
    _excl: PhantomData<&'a mut DeviceBuffer<T>>,
}

impl<T: Elem> DeviceSliceMut<'_, T> {
    pub fn len(&self) -> usize {
        self.view.len
    }
    pub fn is_empty(&self) -> bool {
        self.view.len == 0
    }
}

/// Anything that can be read as a [`DeviceSlice`]: buffers and views. Ops take `&impl
/// AsView<T>` so callers pass a whole buffer or a range of one alike.
pub trait AsView<T: Elem> {
    fn view(&self) -> DeviceSlice<'_, T>;
}
/// Anything that can be written as a [`DeviceSliceMut`]: buffers and mutable views.
pub trait AsViewMut<T: Elem>: AsView<T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T>;
}
impl<T: Elem> AsView<T> for DeviceBuffer<T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        DeviceBuffer::view(self)
    }
}
impl<T: Elem> AsViewMut<T> for DeviceBuffer<T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            view: DeviceBuffer::view(self),
            _excl: PhantomData,
        }
    }
}
impl<T: Elem> AsView<T> for DeviceSlice<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        *self
    }
}
impl<T: Elem> AsView<T> for DeviceSliceMut<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        self.view
    }
}
impl<T: Elem> AsViewMut<T> for DeviceSliceMut<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            view: self.view,
            _excl: PhantomData,
        }
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

/// One kernel argument; `From` impls let call sites write `(&buf).into()`,
/// `buf.slice(a..b)?.into()`, `n.into()`. A pointer argument is a view (a whole buffer is the
/// view of all of it).
#[derive(Clone, Copy)]
pub enum KernelArg<'a> {
    F32Buf(DeviceSlice<'a, f32>),
    I32Buf(DeviceSlice<'a, i32>),
    U32Buf(DeviceSlice<'a, u32>),
    I32(i32),
    U32(u32),
    F32(f32),
    U64(u64),
}
impl<'a, T: Elem> From<&'a DeviceBuffer<T>> for KernelArg<'a> {
    fn from(b: &'a DeviceBuffer<T>) -> Self {
        T::kernel_arg(b.view())
    }
}
impl<'a, T: Elem> From<DeviceSlice<'a, T>> for KernelArg<'a> {
    fn from(v: DeviceSlice<'a, T>) -> Self {
        T::kernel_arg(v)
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
            KernelArg::F32Buf(v) => Some(v.len),
            KernelArg::I32Buf(v) => Some(v.len),
            KernelArg::U32Buf(v) => Some(v.len),
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
            "kernel '{name}': buffer '{pname}' has {have} elements (of its view) but the launch may touch {expr} = {need}"
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

thread_local! {
    /// Launches of each kernel of the table by this thread (index as in `kernels::KERNELS`).
    static KERNEL_LAUNCHES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's counts so far (subtract two readings to measure a region).
pub fn thread_stats() -> DeviceStats {
    STATS.with(|s| s.get())
}

/// How many times this thread has launched kernel `name` (on any device; cuBLAS GEMMs are
/// not kernel launches of the table). An error for a name that is not a kernel.
pub fn thread_kernel_launches(name: &str) -> Result<u64> {
    let (idx, _) = kernels::find(name)?;
    Ok(KERNEL_LAUNCHES.with(|k| k.borrow().get(idx).copied().unwrap_or(0)))
}

fn count_kernel(idx: usize) {
    KERNEL_LAUNCHES.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() <= idx {
            k.resize(kernels::KERNELS.len().max(idx + 1), 0);
        }
        k[idx] += 1;
    });
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
            Device::Sim(s) => sim::alloc_zeros(n, s.options.checks),
            Device::Cuda(c) => c.alloc_zeros(n),
        }
    }

    /// A buffer whose contents are undefined until written (no memset on cuda, where the
    /// stream-ordered pool may hand back freed memory). On sim, with checks on, a kernel that
    /// reads an element before any copy, fill or kernel wrote it fails (initcheck).
    pub fn alloc_uninit<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        count(|s| s.allocs += 1);
        match self {
            Device::Sim(s) => sim::alloc_uninit(n, s.options.checks),
            Device::Cuda(c) => c.alloc_uninit(n),
        }
    }

    /// A new buffer holding a copy of `src`.
    pub fn htod<T: Elem>(&self, src: &[T]) -> Result<DeviceBuffer<T>> {
        // the copy writes every element, so no memset first
        let mut b = self.alloc_uninit(src.len())?;
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
        let sig = &kernels::KERNELS[idx];
        limits::check(sig, block, shared_bytes)?;
        count(|s| s.launches += 1);
        count_kernel(idx);
        profile::op(
            self,
            sig.name,
            || cost::launch_cost(sig, grid, block, args),
            || match self {
                Device::Sim(s) => s.launch_index(idx, grid, block, shared_bytes, args, &s.options),
                Device::Cuda(c) => c.launch_index(idx, grid, block, shared_bytes, args),
            },
        )
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
    /// are supported. Operands are buffers or views (a view's first element is the matrix's
    /// first element; rows are contiguous). cuBLAS on cuda when it loaded, the sgemm kernels
    /// otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ta: Transpose,
        tb: Transpose,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &impl AsView<f32>,
        b: &impl AsView<f32>,
        beta: f32,
        c: &mut impl AsViewMut<f32>,
    ) -> Result<()> {
        let (a, b, mut c) = (a.view(), b.view(), c.view_mut());
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
            a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
            "gemm: buffers too small for m={m} n={n} k={k} (a {}, b {}, c {})",
            a.len(),
            b.len(),
            c.len()
        );
        if let Device::Cuda(cd) = self {
            if cd.has_cublas() {
                count(|s| s.launches += 1);
                let op = match name {
                    "sgemm_nn" => "cublas_sgemm_nn",
                    "sgemm_nt" => "cublas_sgemm_nt",
                    _ => "cublas_sgemm_tn",
                };
                let r = profile::op(
                    self,
                    op,
                    || Some(cost::Cost::gemm(m, n, k, beta)),
                    || cd.cublas_sgemm(ta, tb, mi, ni, ki, alpha, a, b, beta, c.view_mut()),
                );
                match r {
                    Ok(()) => return Ok(()),
                    // a failed cuBLAS call writes nothing: our kernel computes the same GEMM
                    Err(e) => cd.cublas_failed(&e),
                }
            }
        }
        let grid = (blocks_for(n, 16), blocks_for(m, 16));
        self.launch(
            name,
            grid,
            (16, 16),
            0,
            &[
                c.view().into(),
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

/// Which device runs the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DeviceChoice {
    /// cuda when a GPU and the compiled kernels are both present, else cpu
    #[default]
    Auto,
    /// the Rust reference implementation
    Cpu,
    /// NVIDIA GPU through cudarc (driver loaded at run time)
    Cuda,
    /// the CUDA kernels executed on the host by the simulator (slow; for tests)
    Sim,
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
            // the build's reason and the fix for it, which depends on why nvcc did not run
            // (SER_NO_NVCC=1, no nvcc found, stale prebuilt kernels)
            let msg = format!("{e:#}");
            let fix = if kernels::NVCC_STATUS.contains("SER_NO_NVCC=1 was set") {
                "unset SER_NO_NVCC"
            } else {
                "tools/install-cuda-compiler.sh"
            };
            assert!(
                msg.contains(kernels::NVCC_STATUS) && msg.contains("Fix:"),
                "{msg}"
            );
            assert!(
                msg.contains(fix) || msg.contains("tools/pack-kernels.sh"),
                "{msg}"
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
