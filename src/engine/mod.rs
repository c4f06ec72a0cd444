//! The device pipeline, written once for cuda and sim: `frontend` (batched log-Mel and
//! augmentation), `cnn` (conv stages, BatchNorm, pooling, dropout, per-frame FC), `rnn`
//! (BiLSTM, attention, loss, Adam and clipping), and `step`, which composes them into the
//! training step and the `DeviceBackend` the training loop drives.
pub mod check;
pub mod cnn;
pub mod frontend;
pub mod rnn;
pub mod step;
