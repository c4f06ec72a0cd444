//! What a real GPU refuses at launch, checked on every launch on both devices (so the sim
//! reports it too): the block's registers (ptxas's count per thread × threads, allocated per
//! warp) within the register file, static + dynamic shared memory within the per-block
//! maximum, and more than 48 KiB of shared memory only for a kernel that declares
//! `// max-dynamic-shared: BYTES` (the cuda device then sets
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` before such a launch). Registers and static
//! shared memory per kernel and architecture come from ptxas (build.rs,
//! tools/launch-limits.txt); every architecture the fatbin targets is checked.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

use anyhow::{ensure, Result};

use super::kernels::{self, KernelSig, ResourceUse};
use super::Dim3;

/// Shared memory a block may use without the opt-in attribute (static + dynamic).
pub const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

/// Per-block limits of one architecture (CUDA C++ Programming Guide, "Technical
/// Specifications per Compute Capability").
#[derive(Clone, Copy, Debug)]
pub struct ArchLimits {
    pub arch: &'static str,
    /// 32-bit registers available to one block
    pub registers_per_block: u32,
    /// shared memory per block with the opt-in attribute (static + dynamic)
    pub max_shared_optin: u32,
}

const ARCHS: &[ArchLimits] = &[
    ArchLimits {
        arch: "sm_70",
        registers_per_block: 65536,
        max_shared_optin: 96 * 1024,
    },
    ArchLimits {
        arch: "sm_75",
        registers_per_block: 65536,
        max_shared_optin: 64 * 1024,
    },
    ArchLimits {
        arch: "sm_80",
        registers_per_block: 65536,
        max_shared_optin: 163 * 1024,
    },
    ArchLimits {
        arch: "sm_86",
        registers_per_block: 65536,
        max_shared_optin: 99 * 1024,
    },
    ArchLimits {
        arch: "sm_87",
        registers_per_block: 65536,
        max_shared_optin: 163 * 1024,
    },
    ArchLimits {
        arch: "sm_89",
        registers_per_block: 65536,
        max_shared_optin: 99 * 1024,
    },
    ArchLimits {
        arch: "sm_90",
        registers_per_block: 65536,
        max_shared_optin: 227 * 1024,
    },
    ArchLimits {
        arch: "sm_100",
        registers_per_block: 65536,
        max_shared_optin: 227 * 1024,
    },
    ArchLimits {
        arch: "sm_120",
        registers_per_block: 65536,
        max_shared_optin: 99 * 1024,
    },
];

/// The limits of `arch`; an architecture not in the list gets the smallest of each.
pub fn arch_limits(arch: &str) -> ArchLimits {
    ARCHS
        .iter()
        .find(|a| a.arch == arch)
        .copied()
        .unwrap_or(ArchLimits {
            arch: "unknown",
            registers_per_block: 65536,
            max_shared_optin: 64 * 1024,
        })
}

/// The architectures the launch-limit table has rows for (what the fatbin targets).
pub fn target_archs() -> Vec<&'static str> {
    let mut v: Vec<&str> = kernels::LAUNCH_LIMITS.iter().map(|r| r.arch).collect();
    v.sort();
    v.dedup();
    v
}

/// ptxas's resource use of `kernel` on each architecture (empty when the table has none: no
/// nvcc build since the kernel's file changed).
pub fn resource_use(kernel: &str) -> impl Iterator<Item = &'static ResourceUse> + '_ {
    kernels::LAUNCH_LIMITS
        .iter()
        .filter(move |r| r.kernel == kernel)
}

/// Registers a block of `threads` threads takes: whole warps, each allocated
/// ceil(regs × 32 / 256) × 256 registers (the allocation unit of sm_70 to sm_90).
pub fn block_registers(threads: u32, regs_per_thread: u32) -> u64 {
    let warps = threads.div_ceil(32) as u64;
    let per_warp = (regs_per_thread as u64 * 32).div_ceil(256) * 256;
    warps * per_warp
}

/// Whether a launch of `sig` on `arch` with `dynamic_shared` bytes needs the opt-in attribute:
/// a kernel that declares `// max-dynamic-shared:` and whose static + dynamic shared memory is
/// over 48 KiB (or whose static size on `arch` is unknown).
pub fn needs_opt_in(sig: &KernelSig, arch: &str, dynamic_shared: u32) -> bool {
    if sig.max_dynamic_shared.is_none() || dynamic_shared == 0 {
        return false;
    }
    match resource_use(sig.name).find(|r| r.arch == arch) {
        Some(r) => r.static_shared as u64 + dynamic_shared as u64 > DEFAULT_SHARED_LIMIT as u64,
        None => true,
    }
}

/// Errors when a GPU of any target architecture would refuse this launch.
pub fn check(sig: &KernelSig, block: Dim3, dynamic_shared: u32) -> Result<()> {
    let name = sig.name;
    let threads = block.x * block.y * block.z;
    let opt_in = sig.max_dynamic_shared;
    if let Some(max) = opt_in {
        ensure!(
            dynamic_shared <= max,
            "kernel '{name}': {dynamic_shared} bytes of dynamic shared memory, more than the {max} its `// max-dynamic-shared:` line opts in to"
        );
    }
    let mut rows = resource_use(name).peekable();
    if rows.peek().is_none() {
        // no ptxas numbers: at least what holds on every architecture
        ensure!(
            opt_in.is_some() || dynamic_shared <= DEFAULT_SHARED_LIMIT,
            "kernel '{name}': {dynamic_shared} bytes of dynamic shared memory is over the {DEFAULT_SHARED_LIMIT} a block gets without the opt-in; a GPU refuses this launch. Declare `// max-dynamic-shared: BYTES` above the kernel to opt in"
        );
        return Ok(());
    }
    for r in rows {
        let lim = arch_limits(r.arch);
        let regs = block_registers(threads, r.registers);
        ensure!(
            regs <= lim.registers_per_block as u64,
            "kernel '{name}': a block of {threads} threads × {} registers ({}, ptxas) needs {regs} registers, more than the {} of a block; a GPU refuses this launch (too many resources requested)",
            r.registers,
            r.arch,
            lim.registers_per_block
        );
        let total = r.static_shared as u64 + dynamic_shared as u64;
        ensure!(
            opt_in.is_some() || total <= DEFAULT_SHARED_LIMIT as u64,
            "kernel '{name}': {} bytes of static + {dynamic_shared} of dynamic shared memory ({}) is over the {DEFAULT_SHARED_LIMIT} a block gets without the opt-in; a GPU refuses this launch. Declare `// max-dynamic-shared: BYTES` above the kernel to opt in",
            r.static_shared,
            r.arch
        );
        let reserved = r.static_shared as u64 + opt_in.unwrap_or(0) as u64;
        ensure!(
            total <= lim.max_shared_optin as u64 && reserved <= lim.max_shared_optin as u64,
            "kernel '{name}': {} bytes of static + {} of dynamic shared memory is over the {} a block can have on {}",
            r.static_shared,
            opt_in.unwrap_or(dynamic_shared).max(dynamic_shared),
            lim.max_shared_optin,
            r.arch
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_allocation_is_per_warp_in_units_of_256() {
        // 64 registers × 1024 threads fills the 65536 exactly; 65 rounds up to 72 per thread
        assert_eq!(block_registers(1024, 64), 65536);
        assert_eq!(block_registers(1024, 65), 32 * 72 * 32);
        // a partial warp takes a whole warp's registers
        assert_eq!(block_registers(33, 32), 2 * 1024);
    }
}
