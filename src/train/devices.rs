//! `--devices`: the devices a cv or sweep spreads its independent runs over, one run per
//! device at a time (docs/guide.md, "Several GPUs in one machine").
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use crate::device::{CudaDevice, Device, DeviceChoice};
use crate::model::ModelConfig;
use crate::train::backend::{make_backend, Backend, OptimConfig};
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
            Ok(Box::new(crate::engine::step::DeviceBackend::new(
                Device::Cuda(dev),
                model,
                optim,
                seed,
            )?))
        }
    }
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
