//! Audio input: decoding (`decode`), resampling (`resample`), corpora and their layouts
//! (`corpus`) and the synthetic demo corpus (`synth`).
//!
//! Layer: audio (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

pub mod corpus;
pub mod decode;
pub mod merge;
pub mod resample;
pub mod synth;

pub use decode::{load_audio, probe_audio, Audio, AudioInfo};
