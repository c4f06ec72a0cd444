//! The `sim` device: kernels compiled for the host (build.rs, kernels/sim/shim.cpp) and run with
//! every CUDA thread as a fiber and blocks spread over OS threads. Launches are synchronous;
//! device memory is host memory. See kernels/sim/shim.h for the execution model.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

use std::alloc::Layout;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// racecheck and initcheck (kernels/sim/shim.cpp, "Checks"): a data race on shared or
    /// global memory, or a read of device memory never written since `alloc_uninit`, is a
    /// launch error. On by default; `SER_SIM_CHECKS=0` turns them off for speed.
    pub checks: bool,
}

/// Whether the sim checks are on unless told otherwise: `SER_SIM_CHECKS=0` turns them off.
pub fn checks_default() -> bool {
    std::env::var("SER_SIM_CHECKS").map_or(true, |v| v != "0")
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            shuffle: true,
            seed: 0x5EED,
            workers: 0,
            checks: checks_default(),
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
    checks: c_int,
}

/// A buffer argument as the shim's checks see it (`SerSimBuf` in shim.cpp).
#[repr(C)]
struct FfiBuf {
    base: *const u8,
    bytes: u64,
    view: *const u8,
    view_bytes: u64,
    shadow: *mut u64,
    name: *const u8,
    name_len: u64,
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
        bufs: *const FfiBuf,
        nbufs: c_int,
        o: *const FfiOptions,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn ser_sim_static_shared_checked() -> c_int;
}

/// Whether racecheck covers static `__shared__` variables on this platform (it finds them in
/// the executable's thread-local storage, x86-64 only); dynamic shared memory and global
/// memory are covered everywhere.
pub fn static_shared_checked() -> bool {
    // SAFETY: a pure query of the shim.
    unsafe { ser_sim_static_shared_checked() != 0 }
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
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "sim: kernels on the host, {w} worker threads, shuffled order {}, racecheck + initcheck {}",
            on(self.options.shuffle),
            on(self.options.checks)
        )
    }

    /// Launches kernel number `idx` of the table with explicit options (the launch must have
    /// been checked by `check_launch` and `limits::check`; `Device::launch` does all).
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
        let sig = &super::kernels::KERNELS[idx];
        let bufs: Vec<FfiBuf> = if opts.checks {
            args.iter()
                .zip(sig.params)
                .filter_map(|(a, p)| match a {
                    KernelArg::F32Buf(v) => Some(ffi_buf(v, p.name)),
                    KernelArg::I32Buf(v) => Some(ffi_buf(v, p.name)),
                    KernelArg::U32Buf(v) => Some(ffi_buf(v, p.name)),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let o = FfiOptions {
            shuffle: opts.shuffle as c_int,
            seed: opts.seed,
            workers: opts.workers.min(4096) as c_int,
            checks: opts.checks as c_int,
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
                bufs.as_ptr(),
                bufs.len() as c_int,
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
        super::limits::check(&super::kernels::KERNELS[idx], block, shared_bytes)?;
        self.launch_index(idx, grid, block, shared_bytes, args, opts)
    }
}

/// The checks' view of a buffer argument: its whole buffer, the view, and the shadow words.
fn ffi_buf<T: Elem>(v: &DeviceSlice<'_, T>, name: &'static str) -> FfiBuf {
    let size = std::mem::size_of::<T>();
    match &v.buffer().mem {
        Mem::Sim(m) => FfiBuf {
            base: m.ptr.as_ptr(),
            bytes: m.bytes as u64,
            // SAFETY: off <= len, inside the allocation (or one past its data).
            view: unsafe { m.ptr.as_ptr().add(v.offset() * size) },
            view_bytes: (v.len() * size) as u64,
            shadow: m.shadow.map_or(std::ptr::null_mut(), |s| s.as_ptr()),
            name: name.as_ptr(),
            name_len: name.len() as u64,
        },
        // launch_index already refused cuda buffers (host_ptr)
        Mem::Cuda(_) => unreachable!("a cuda buffer in a sim launch"),
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

/// Host memory standing in for device memory: 256-byte aligned (as cudaMalloc) and only ever
/// accessed through its raw pointer, so kernels may write it while Rust holds `&`. A canary
/// region follows the data so out-of-bounds writes are caught after each launch. With checks
/// on, a shadow word per 4 data bytes serves the shim's checks: bit 63 set = never written
/// (initcheck), the rest = launch, block and thread of the last plain kernel store (racecheck
/// across blocks).
pub(crate) struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
    bytes: usize,
    shadow: Option<NonNull<u64>>,
    /// Whether some shadow word may still have the unwritten bit (alloc_uninit, until a host
    /// copy or fill wrote the whole buffer).
    maybe_unwritten: AtomicBool,
}
// SAFETY: plain memory owned by this value; accesses are synchronised by the launch API.
unsafe impl Send for HostMem {}
unsafe impl Sync for HostMem {}

/// Shadow bit of a word nothing has written since `alloc_uninit` (kernels/sim/shim.cpp).
const UNWRITTEN: u64 = 1 << 63;

impl HostMem {
    /// `bytes` of zeros (as cuda's alloc_zeros: written, by the memset), or of 0xFF (NaN as
    /// floats) marked unwritten for initcheck when `written` is false.
    fn new(bytes: usize, written: bool, checks: bool) -> Result<Self> {
        let layout = Layout::from_size_align(bytes + GUARD, 256)?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else {
            bail!("sim: out of host memory allocating {bytes} bytes");
        };
        // SAFETY: data and guard lie inside the allocation.
        unsafe {
            if !written {
                std::ptr::write_bytes(p, 0xFF, bytes);
            }
            std::ptr::write_bytes(p.add(bytes), CANARY, GUARD);
        }
        let mut m = HostMem {
            ptr,
            layout,
            bytes,
            shadow: None,
            maybe_unwritten: AtomicBool::new(!written),
        };
        if checks {
            let words = bytes.div_ceil(4).max(1);
            let sl = Layout::array::<u64>(words)?;
            // SAFETY: non-zero size; freed in Drop with the same layout.
            let sp = unsafe { std::alloc::alloc_zeroed(sl) } as *mut u64;
            let Some(sp) = NonNull::new(sp) else {
                bail!("sim: out of host memory allocating the checks' shadow of {bytes} bytes");
            };
            if !written {
                // SAFETY: `words` u64 allocated above.
                unsafe { std::slice::from_raw_parts_mut(sp.as_ptr(), words) }.fill(UNWRITTEN);
            }
            m.shadow = Some(sp);
        }
        Ok(m)
    }
    fn shadow_words(&self) -> usize {
        self.bytes.div_ceil(4).max(1)
    }
    /// The host wrote every element (a copy or a fill): nothing is unwritten any more.
    fn mark_written(&mut self) {
        if let Some(sp) = self.shadow {
            if self.maybe_unwritten.swap(false, Ordering::Relaxed) {
                // SAFETY: allocated with shadow_words() words; `&mut self` is exclusive.
                unsafe { std::slice::from_raw_parts_mut(sp.as_ptr(), self.shadow_words()) }.fill(0);
            }
        }
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
    /// The data for the host to write in full (a copy or fill), which counts as written.
    pub(crate) fn as_mut_slice<T: Elem>(&mut self, len: usize) -> &mut [T] {
        debug_assert!(len * std::mem::size_of::<T>() <= self.layout.size());
        self.mark_written();
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut T, len) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated with these layouts.
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout);
            if let Some(sp) = self.shadow {
                let sl = Layout::array::<u64>(self.shadow_words()).expect("allocated before");
                std::alloc::dealloc(sp.as_ptr() as *mut u8, sl);
            }
        }
    }
}

fn alloc<T: Elem>(n: usize, written: bool, checks: bool) -> Result<DeviceBuffer<T>> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| anyhow::anyhow!("sim: buffer of {n} elements overflows"))?;
    Ok(DeviceBuffer {
        len: n,
        mem: Mem::Sim(HostMem::new(bytes, written, checks)?),
    })
}

/// A zeroed buffer (written, as cuda's memset after cudaMalloc); with a checks shadow when
/// `checks`.
pub(crate) fn alloc_zeros<T: Elem>(n: usize, checks: bool) -> Result<DeviceBuffer<T>> {
    alloc(n, true, checks)
}

/// A buffer whose contents are undefined (0xFF bytes here) and, with `checks`, unwritten for
/// initcheck until a copy, fill or kernel writes them.
pub(crate) fn alloc_uninit<T: Elem>(n: usize, checks: bool) -> Result<DeviceBuffer<T>> {
    alloc(n, false, checks)
}
