//! Audio input: decoding (`decode`), resampling (`resample`), corpora and their layouts
//! (`corpus`) and the synthetic demo corpus (`synth`).

pub mod corpus;
pub mod decode;
pub mod resample;
pub mod synth;

pub use decode::{load_audio, probe_audio, Audio, AudioInfo};
