//! Keeps freed activation memory in the process instead of handing it back to the OS.
//!
//! Why: every CPU forward/backward allocates tens of large activation vectors (a stage-1
//! activation at batch 16 is 32 MB) and frees them at the end of the step. With glibc's
//! defaults such blocks are `mmap`ed and unmapped (or trimmed off the heap top) each time, so
//! every step page-faults all of its activation memory back in and the kernel zero-fills it:
//! measured 232 k page faults in a 4-step `bench train` run and a third of inference time.
//! Raising the mmap threshold to its maximum and the trim threshold to 1 GiB makes glibc
//! reuse those blocks from its free lists; peak memory is unchanged (the same blocks are
//! live at the peak either way).
//!
//! Only glibc has `mallopt`; elsewhere [`keep_freed_memory`] does nothing.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

/// Asks the C allocator to keep freed blocks up to 32 MiB on its free lists (not `mmap` them)
/// and never trim less than 1 GiB off the heap. Returns whether the allocator accepted both.
/// Process-wide; call once at start-up, before the first large allocation.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // glibc <malloc.h>: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3. The mmap threshold
        // cannot exceed HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit; larger blocks stay mmapped.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; it is called with valid
        // parameter numbers and in-range values, and glibc serialises it with allocations.
        unsafe {
            let a = mallopt(M_MMAP_THRESHOLD, 32 << 20);
            let b = mallopt(M_TRIM_THRESHOLD, 1 << 30);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the free memory of every allocator arena back to the OS (glibc `malloc_trim`): with
/// [`keep_freed_memory`] each thread's arena keeps the blocks it freed, so a process that ran
/// work on many threads holds about one set per thread. Bounded inference calls it after each
/// model call; elsewhere it does nothing.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free memory; glibc serialises it per arena.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`), where /proc tells it.
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory this process has resident now (`VmRSS`), bytes.
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The most memory this process has had resident (`VmHWM`), bytes.
pub fn peak_resident_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc accepts the settings (the values are within its documented limits), and memory
    /// still works afterwards.
    #[test]
    fn mallopt_accepted() {
        let ok = keep_freed_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(ok, "mallopt rejected the thresholds");
        }
        let v = vec![1u8; 40 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 40 << 20);
    }
}
