//! The `sim` device: kernels compiled for the host (build.rs, kernels/sim/shim.cpp) and run with
//! every CUDA thread as a fiber and blocks spread over OS threads. Launches are synchronous;
//! device memory is host memory. See kernels/sim/shim.h for the execution model.

use std::alloc::Layout;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::Mutex;

use anyhow::{bail, Result};

use super::{ArgPack, DeviceBuffer, DeviceSlice, Dim3, Elem, KernelArg, Mem};

/// How the sim schedules threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Run the threads between two barriers in a seeded shuffled order (instead of thread
    /// order), so a missing barrier gives a wrong answer rather than passing by luck.
    pub shuffle: bool,
    /// Seed of the shuffle (mixed with the block index).
    pub seed: u64,
    /// OS threads for the blocks of one launch; 0 = one per core.
    pub workers: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            shuffle: true,
            seed: 0x5EED,
            workers: 0,
        }
    }
}

static DEFAULT_OPTIONS: Mutex<Option<SimOptions>> = Mutex::new(None);

/// Sets the options that `SimDevice::new` (and so `Device::sim`, `--device sim`) uses.
pub fn set_default_options(o: SimOptions) {
    *DEFAULT_OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

/// The current default options.
pub fn default_options() -> SimOptions {
    DEFAULT_OPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

#[repr(C)]
struct FfiOptions {
    shuffle: c_int,
    seed: u64,
    workers: c_int,
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn ser_sim_launch(
        index: c_int,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared_bytes: u64,
        args: *mut *mut c_void,
        o: *const FfiOptions,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// The sim device (cheap to create; holds only its options).
#[derive(Clone, Debug)]
pub struct SimDevice {
    pub options: SimOptions,
}

impl Default for SimDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDevice {
    pub fn new() -> Self {
        SimDevice {
            options: default_options(),
        }
    }

    pub fn with_options(options: SimOptions) -> Self {
        SimDevice { options }
    }

    pub fn describe(&self) -> String {
        let w = if self.options.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.options.workers
        };
        format!(
            "sim: kernels on the host, {w} worker threads, shuffled order {}",
            if self.options.shuffle { "on" } else { "off" }
        )
    }

    /// Launches kernel number `idx` of the table with explicit options (the launch must have
    /// been checked by `check_launch`; `Device::launch` does both).
    pub(crate) fn launch_index(
        &self,
        idx: usize,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[KernelArg],
        opts: &SimOptions,
    ) -> Result<()> {
        let mut pack = ArgPack::new(args, &mut |a| {
            let p = match a {
                KernelArg::F32Buf(v) => host_ptr(v)?,
                KernelArg::I32Buf(v) => host_ptr(v)?,
                KernelArg::U32Buf(v) => host_ptr(v)?,
                _ => unreachable!("scalars are packed by ArgPack"),
            };
            Ok(p as u64)
        })?;
        let o = FfiOptions {
            shuffle: opts.shuffle as c_int,
            seed: opts.seed,
            workers: opts.workers.min(4096) as c_int,
        };
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: the launch was checked against the kernel's signature and extents, so every
        // pointer slot points at a live buffer of sufficient length; the call is synchronous.
        let rc = unsafe {
            ser_sim_launch(
                idx as c_int,
                grid.x,
                grid.y,
                grid.z,
                block.x,
                block.y,
                block.z,
                shared_bytes as u64,
                pack.as_mut_ptrs().as_mut_ptr(),
                &o,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the shim writes a NUL-terminated message into err.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            bail!("sim launch failed: {msg}");
        }
        let sig = &super::kernels::KERNELS[idx];
        for (a, p) in args.iter().zip(sig.params) {
            let intact = match a {
                KernelArg::F32Buf(v) => guard_ok(v.buffer()),
                KernelArg::I32Buf(v) => guard_ok(v.buffer()),
                KernelArg::U32Buf(v) => guard_ok(v.buffer()),
                _ => true,
            };
            if !intact {
                bail!(
                    "sim: kernel '{}' wrote past the end of buffer '{}' (its canary changed)",
                    sig.name,
                    p.name
                );
            }
        }
        Ok(())
    }

    /// `Device::launch` with per-launch options.
    pub fn launch_with(
        &self,
        name: &str,
        grid: impl Into<Dim3>,
        block: impl Into<Dim3>,
        shared_bytes: u32,
        args: &[KernelArg],
        opts: &SimOptions,
    ) -> Result<()> {
        let (grid, block) = (grid.into(), block.into());
        let idx = super::check_launch(name, grid, block, args)?;
        self.launch_index(idx, grid, block, shared_bytes, args, opts)
    }
}

fn guard_ok<T: Elem>(b: &DeviceBuffer<T>) -> bool {
    match &b.mem {
        Mem::Sim(m) => m.guard_intact(),
        Mem::Cuda(_) => true,
    }
}

/// Host address of a view's first element (buffer start + offset; the view lies inside the
/// buffer by construction).
fn host_ptr<T: Elem>(v: &DeviceSlice<'_, T>) -> Result<*mut u8> {
    match &v.buffer().mem {
        // SAFETY: off ≤ len, so the result is inside the allocation (or one past its data).
        Mem::Sim(m) => Ok(unsafe { m.ptr.as_ptr().add(v.offset() * std::mem::size_of::<T>()) }),
        Mem::Cuda(_) => bail!("a cuda buffer was passed to a sim launch"),
    }
}

/// Bytes of canary after every sim buffer; a launch that changed them wrote past the end.
const GUARD: usize = 256;
const CANARY: u8 = 0xA5;

/// Host memory standing in for device memory: 256-byte aligned (as cudaMalloc), zeroed, and
/// only ever accessed through its raw pointer, so kernels may write it while Rust holds `&`.
/// A canary region follows the data so out-of-bounds writes are caught after each launch.
pub(crate) struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
    bytes: usize,
}
// SAFETY: plain memory owned by this value; accesses are synchronised by the launch API.
unsafe impl Send for HostMem {}
unsafe impl Sync for HostMem {}

impl HostMem {
    fn zeroed(bytes: usize) -> Result<Self> {
        let layout = Layout::from_size_align(bytes + GUARD, 256)?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else {
            bail!("sim: out of host memory allocating {bytes} bytes");
        };
        // SAFETY: the guard lies inside the allocation.
        unsafe { std::ptr::write_bytes(p.add(bytes), CANARY, GUARD) };
        Ok(HostMem { ptr, layout, bytes })
    }
    /// Whether the canary after the data was intact; a broken one is restored (the error is
    /// reported once, and the buffer stays usable).
    fn guard_intact(&self) -> bool {
        // SAFETY: inside the allocation, initialised; no launch is running (launches are
        // synchronous) and the guard is never exposed as a Rust reference elsewhere.
        let g = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.bytes), GUARD) };
        let ok = g.iter().all(|&b| b == CANARY);
        if !ok {
            g.fill(CANARY);
        }
        ok
    }
    pub(crate) fn as_slice<T: Elem>(&self, len: usize) -> &[T] {
        debug_assert!(len * std::mem::size_of::<T>() <= self.layout.size());
        // SAFETY: allocated for `len` T's, aligned, initialised (zeroed / written).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const T, len) }
    }
    pub(crate) fn as_mut_slice<T: Elem>(&mut self, len: usize) -> &mut [T] {
        debug_assert!(len * std::mem::size_of::<T>() <= self.layout.size());
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut T, len) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub(crate) fn alloc_zeros<T: Elem>(n: usize) -> Result<DeviceBuffer<T>> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| anyhow::anyhow!("sim: buffer of {n} elements overflows"))?;
    Ok(DeviceBuffer {
        len: n,
        mem: Mem::Sim(HostMem::zeroed(bytes)?),
    })
}
