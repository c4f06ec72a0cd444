//! ser-engine: a training engine for ArabEmoNet (2D-CNN + BiLSTM + attention speech emotion
//! recognition) with hand-written CUDA kernels, a CPU reference implementation and a host
//! simulator (`sim`) that runs the same kernel sources on the CPU.
//!
//! Module map (one obvious place for each thing):
//! - [`audio`]    decoding, resampling, corpora and their layouts, the synthetic demo corpus
//! - [`cache`]    the user's cache folder (demo corpus, CPU convolution timings)
//! - [`features`] STFT + Mel + dB reference front end (librosa-exact)
//! - [`isa`]      the vector instruction set our SIMD code uses (`SER_CPU_ISA` caps it)
//! - [`rng`]      Philox4x32-10, the one random generator shared by CPU and kernels
//! - [`model`]    model configuration, parameter layout (PyTorch state_dict names), init, checkpoints
//! - [`backend`]  the seam between training and a device: the `Backend` trait, the batch, the
//!   memory model (below `cpu` and `engine`, which implement it, and `train`, which drives it)
//! - [`cpu`]      reference ops, forward and backward, generic over f32/f64; the CPU backend
//! - [`device`]   executor interface; `cuda` (cudarc) and `sim` (host shim) implementations
//! - [`engine`]   the device training step, written once for cuda and sim
//! - [`train`]    training loop, schedule, early stopping, metrics, cross-validation
//! - [`infer`]    using a trained model: clips, long recordings in windows, live streams
//! - [`serve`]    the web app and JSON API of `ser-engine serve`
//! - [`cli`]      one file per subcommand
//! - [`atomic_file`] whole-file writes through a temporary file and a rename
//! - [`sha256`]   SHA-256 of a file's bytes (which run a fine-tuned run started from)
//! - [`chart`]    charts as SVG (the page of `serve`) and the same SVG as PNG (every command)
//!
//! Layers run one way: `cli` → `infer` → `train` → `engine` → `cpu` → `backend` → `model`,
//! `features`, `audio` → `device` (each may use those after it); `train` names `engine` only
//! where the device is chosen (`train::devices`) and otherwise drives a `dyn Backend`; `rng`,
//! `isa`, `cache`, `atomic_file`, `sha256` and `chart` are shared by every layer and use nothing of the
//! crate but `atomic_file`. Each module's first lines say which layers it may use. The
//! documents beside the code: README.md, docs/guide.md, docs/design.md, docs/results.md and
//! docs/gpu.md.

pub mod atomic_file;
pub mod audio;
pub mod backend;
pub mod cache;
pub mod chart;
pub mod cli;
pub mod cpu;
pub mod device;
pub mod engine;
pub mod features;
pub mod infer;
pub mod isa;
pub mod model;
pub mod rng;
pub mod serve;
pub mod sha256;
pub mod train;
