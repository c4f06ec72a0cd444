//! The device pipeline, written once for cuda and sim: `frontend` (batched log-Mel and
//! augmentation), `rnn` (BiLSTM, attention, loss, Adam and clipping).
pub mod frontend;
pub mod rnn;
