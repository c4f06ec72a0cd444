//! The device pipeline, written once for cuda and sim: `frontend` (batched log-Mel and
//! augmentation), `cnn` (conv stages, BatchNorm, pooling, dropout, per-frame FC), `rnn`
//! (BiLSTM, attention, loss, Adam and clipping), `cudnn` (the conv stages' convolutions
//! through cuDNN on cuda, with our masking around them), `step`, which composes them into the
//! training step and the `DeviceBackend` the training loop drives, and `check`, the
//! device-vs-CPU table of `gradcheck --device sim|cuda`.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.
pub mod check;
pub mod checks;
pub mod cnn;
pub mod cudnn;
pub mod frontend;
pub mod rnn;
pub mod step;
