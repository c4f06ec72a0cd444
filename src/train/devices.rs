//! The one place a training backend is chosen: `--device` ([`make_backend`]) and `--devices`,
//! the devices a cv or sweep spreads its independent runs over, one run per device at a time
//! (docs/guide.md, "Several GPUs in one machine"). Everything else in train drives a
//! `dyn Backend` ([`crate::backend`]).
//!
//! Layer: train (below cli). May use `backend`, `engine` (only here, to build the device
//! backend), `cpu`, `features`, `model`, `audio`, `device` and the shared modules; never `cli`.

use crate::backend::{Backend, OptimConfig};
use crate::cpu::backend::CpuBackend;
use crate::device::{CudaDevice, Device, DeviceChoice};
use crate::engine::step::DeviceBackend;
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use std::fmt;

/// Most entries `--devices` takes (one worker thread each).
pub const MAX_DEVICES: usize = 64;

/// One worker's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSlot {
    /// The global `--device` (auto, cpu, sim or cuda GPU 0).
    Choice(DeviceChoice),
    /// CUDA GPU with this ordinal.
    Cuda(usize),
}

impl fmt::Display for DeviceSlot {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceSlot::Choice(c) => write!(f, "{}", format!("{c:?}").to_lowercase()),
            DeviceSlot::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Parses `--devices`: comma-separated GPU ordinals (`0,1,2,3`), `sim` or `cpu` entries
/// (`sim,sim` for tests); 1 to [`MAX_DEVICES`] entries, a GPU at most once.
pub fn parse_devices(s: &str) -> Result<Vec<DeviceSlot>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let slot = match part {
            "sim" => DeviceSlot::Choice(DeviceChoice::Sim),
            "cpu" => DeviceSlot::Choice(DeviceChoice::Cpu),
            p => DeviceSlot::Cuda(p.parse().with_context(|| {
                format!("--devices {s}: '{p}' is not a GPU number, 'sim' or 'cpu'")
            })?),
        };
        if matches!(slot, DeviceSlot::Cuda(_)) && out.contains(&slot) {
            bail!("--devices {s}: GPU {part} is listed twice");
        }
        out.push(slot);
    }
    if out.is_empty() {
        bail!("--devices is empty");
    }
    if out.len() > MAX_DEVICES {
        bail!(
            "--devices lists {} devices: at most {MAX_DEVICES}",
            out.len()
        );
    }
    Ok(out)
}

/// Makes the training backend for the chosen device.
pub fn make_backend(
    device: DeviceChoice,
    model: &ModelConfig,
    optim: &OptimConfig,
    seed: u64,
) -> Result<Box<dyn Backend>> {
    use crate::device::{select, Selected};
    match device {
        DeviceChoice::Cpu => Ok(Box::new(CpuBackend::new(model, optim, seed))),
        // select(Auto) is cuda when a usable GPU is present, else cpu.
        DeviceChoice::Auto | DeviceChoice::Cuda | DeviceChoice::Sim => match select(device)? {
            Selected::Cpu => Ok(Box::new(CpuBackend::new(model, optim, seed))),
            Selected::Device(_)
                if crate::cpu::bf16::precision() == crate::cpu::bf16::Precision::Bf16 =>
            {
                anyhow::bail!("--precision bf16 is implemented for the cpu device only, and a GPU was selected; use --device cpu or --precision fp32")
            }
            Selected::Device(dev) => Ok(Box::new(DeviceBackend::new(dev, model, optim, seed)?)),
        },
    }
}

/// The training backend on `slot`.
pub fn make_backend_on(
    slot: DeviceSlot,
    model: &ModelConfig,
    optim: &OptimConfig,
    seed: u64,
) -> Result<Box<dyn Backend>> {
    match slot {
        DeviceSlot::Choice(c) => make_backend(c, model, optim, seed),
        DeviceSlot::Cuda(i) => {
            let dev = CudaDevice::new(i).with_context(|| format!("--devices: GPU {i}"))?;
            Ok(Box::new(DeviceBackend::new(
                Device::Cuda(dev),
                model,
                optim,
                seed,
            )?))
        }
    }
}

/// Upper bound of the host memory one training step takes on the host workers of `devices`
/// (before their backends exist): the CPU's memory model where a worker may run on the CPU
/// (`cpu`, or `auto`, which falls back to it), the device workspace on `sim`, nothing on a
/// GPU. Each worker checks its own share of the host's memory.
pub fn host_step_bytes(
    devices: &[DeviceSlot],
    model: &ModelConfig,
    batch: usize,
    t_max: usize,
) -> u64 {
    let cpu_threads = rayon::current_num_threads();
    devices
        .iter()
        .map(|d| match d {
            DeviceSlot::Choice(DeviceChoice::Cpu | DeviceChoice::Auto) => {
                crate::cpu::memory::train_step_bytes(model, batch, t_max, cpu_threads)
            }
            DeviceSlot::Choice(DeviceChoice::Sim) => {
                crate::backend::memory::workspace_bytes(model, batch, t_max) as u64
            }
            DeviceSlot::Choice(DeviceChoice::Cuda) | DeviceSlot::Cuda(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(
            parse_devices("0,1").unwrap(),
            vec![DeviceSlot::Cuda(0), DeviceSlot::Cuda(1)]
        );
        assert_eq!(
            parse_devices("sim, sim").unwrap(),
            vec![DeviceSlot::Choice(DeviceChoice::Sim); 2]
        );
        assert!(parse_devices("0,0").is_err());
        assert!(parse_devices("gpu").is_err());
        assert!(parse_devices("").is_err());
    }
}
