//! Written by the audio work; see audio/mod.rs.
