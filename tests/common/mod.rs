//! Helpers shared by the integration tests: the test device, the CLI helpers (`cli`), and —
//! re-exported from the library, where `ser-engine check` uses them too — random inputs, clip
//! lengths, f32 → f64 conversion and the error checks. Each test file includes this with
//! `mod common;` and uses only some of it.
#![allow(dead_code)]

pub mod cli;
pub mod http;

use ser_engine::device::{Device, SimDevice, SimOptions};
// each test file uses only some of these
#[allow(unused_imports)]
pub use ser_engine::engine::checks::util::*;

/// The device under test: the sim with shuffled thread order (seeded by `seed`, so each test
/// file keeps its own schedule), or the real GPU with SER_TEST_DEVICE=cuda.
pub fn device(seed: u64) -> Device {
    match std::env::var("SER_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(
            ser_engine::device::CudaDevice::new(0).expect("SER_TEST_DEVICE=cuda but no usable GPU"),
        ),
        _ => Device::Sim(SimDevice::with_options(SimOptions {
            shuffle: true,
            seed,
            workers: 0,
            ..SimOptions::default()
        })),
    }
}
