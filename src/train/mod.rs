//! Training: loop, schedule, early stopping, metrics, splits and cross-validation.

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
