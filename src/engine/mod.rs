//! See lib.rs for this module's role. `frontend`: the batched log-Mel front end on a device.
pub mod frontend;
