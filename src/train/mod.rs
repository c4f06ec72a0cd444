//! Training: loop, schedule, early stopping, metrics, splits and cross-validation.
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

pub mod backend;
pub mod cpu_backend;
pub mod data;
pub mod devices;
pub mod fit;
pub mod metrics;
pub mod options;
pub mod plot;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod shard;
pub mod split;
pub mod sweep;
