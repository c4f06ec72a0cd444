//! Training: loop, schedule, early stopping, metrics, splits and cross-validation.

pub mod metrics;
pub mod schedule;
pub mod split;
pub mod backend;
pub mod data;
pub mod fit;
pub mod plot;
pub mod run;
pub mod cpu_backend;
