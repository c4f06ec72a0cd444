//! The CNN + FC kernels (src/engine/cnn/, kernels/{conv,batchnorm,pool,dropout,fc}.cu) on the
//! `sim` device with shuffled thread order (or the real GPU with SER_TEST_DEVICE=cuda), each op
//! against its CPU reference in `ser_engine::cpu`, then the composed forward/backward against
//! the CPU model's intermediates. Sizes are random and not multiples of the block size; clips
//! have unequal lengths and garbage in their padding.
//!
//! Tolerances: the oracle runs in f64 on the same f32 inputs, so the error measured is the
//! device's f32 rounding alone. Forward ops (sums of ≤ a few hundred products) stay at a
//! relative-norm error ≤ 1e-5 (f32 ε = 6e-8 times accumulation length and a few ulp of the
//! intermediate roundings); gradients (longer sums, BN's cancelling terms) ≤ 1e-4. Pooling,
//! reshapes and dropout involve no arithmetic beyond one f32 multiply done identically on both
//! sides, so they are compared bit for bit against the f32 CPU op.
//!
//! The checks themselves live in src/engine/checks/cnn.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

fn run(name: &str) {
    ser_engine::engine::checks::run_test("cnn", name);
}

#[test]
fn conv_matches_cpu() {
    run("conv_matches_cpu");
}

#[test]
fn batchnorm_relu_matches_cpu() {
    run("batchnorm_relu_matches_cpu");
}

#[test]
fn dropout_masks_are_bit_identical() {
    run("dropout_masks_are_bit_identical");
}

#[test]
fn maxpool_with_mask_and_dropout_matches_cpu_exactly() {
    run("maxpool_with_mask_and_dropout_matches_cpu_exactly");
}

#[test]
fn frames_and_fc_match_cpu() {
    run("frames_and_fc_match_cpu");
}

#[test]
fn reductions_2d_match_cpu_and_are_deterministic() {
    run("reductions_2d_match_cpu_and_are_deterministic");
}

#[test]
fn composed_cnn_matches_cpu_model() {
    run("composed_cnn_matches_cpu_model");
}

#[test]
fn forward_rejects_bad_input_with_errors() {
    run("forward_rejects_bad_input_with_errors");
}

#[test]
fn eval_without_stats_snapshot_is_identical_and_has_no_backward() {
    run("eval_without_stats_snapshot_is_identical_and_has_no_backward");
}
