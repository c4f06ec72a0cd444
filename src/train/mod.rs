//! Training: loop, schedule, early stopping, metrics, splits and cross-validation.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

pub mod data;
pub mod devices;
pub mod fit;
pub mod init;
pub mod metrics;
pub mod mixup;
pub mod options;
pub mod plot;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod shard;
pub mod speed;
pub mod split;
pub mod sweep;
