//! The sequence-half kernels (kernels/{lstm,attention,loss,adam}.cu through engine::rnn) on the
//! `sim` device with shuffled thread order (or the real GPU with SER_TEST_DEVICE=cuda) against
//! the CPU reference ops of src/cpu. Sizes are small, odd (not multiples of any block size),
//! and clips have unequal lengths including a clip of length 1.
//!
//! Tolerances (relative L2 norms ‖dev − ref‖/‖ref‖; the reference runs in f64 from the same f32
//! inputs, so the error measured is the device's f32 rounding):
//! - forward 1e-5: each value is a few dot products of ≤ 20 terms and ≤ 7 recurrent steps of
//!   f32 arithmetic (unit roundoff 6e-8); accumulated relative error is ~1e-6, while any
//!   indexing or masking bug gives O(1).
//! - gradients 1e-4: backpropagation through time compounds more roundings (and gradients
//!   that are sums of cancelling terms have larger relative error), still far below O(1).
//! - Adam after 3 steps 1e-6: the device does the same f32 operations as cpu::Adam<f32>
//!   (differences only from FMA contraction, ~1 ulp per step).
//! - dropout masks: bit-identical (same Philox words, same comparison, same f32 scale).
//!
//! The checks themselves live in src/engine/checks/rnn.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

fn run(name: &str) {
    ser_engine::engine::checks::run_test("rnn", name);
}

#[test]
fn lstm_layer_matches_cpu() {
    run("lstm_layer_matches_cpu");
}

#[test]
fn lstm_rejects_unsupported_hidden_size() {
    run("lstm_rejects_unsupported_hidden_size");
}

#[test]
fn dropout_masks_are_identical_to_cpu() {
    run("dropout_masks_are_identical_to_cpu");
}

#[test]
fn attention_matches_cpu() {
    run("attention_matches_cpu");
}

#[test]
fn cross_entropy_matches_cpu() {
    run("cross_entropy_matches_cpu");
}

#[test]
fn soft_cross_entropy_matches_cpu() {
    run("soft_cross_entropy_matches_cpu");
}

#[test]
fn adam_and_clipping_match_cpu() {
    run("adam_and_clipping_match_cpu");
}

#[test]
fn composed_sequence_half_matches_cpu() {
    run("composed_sequence_half_matches_cpu");
}
