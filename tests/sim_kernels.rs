//! The first kernels on the `sim` device (or the real GPU with SER_TEST_DEVICE=cuda) against
//! CPU references. Sizes are drawn at random and are NOT multiples of the block size, so the
//! bounds checks and partial tiles are exercised; the sim runs with shuffled thread order.
//!
//! The checks themselves live in src/engine/checks/kernels.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

fn run(name: &str) {
    ser_engine::engine::checks::run_test("kernels", name);
}

#[test]
fn elementwise_match_cpu() {
    run("elementwise_match_cpu");
}

#[test]
fn reductions_match_cpu() {
    run("reductions_match_cpu");
}

#[test]
fn gemm_matches_cpu() {
    run("gemm_matches_cpu");
}

#[test]
fn philox_kernel_matches_rng_rs() {
    run("philox_kernel_matches_rng_rs");
}

#[test]
fn launch_errors_are_reported() {
    run("launch_errors_are_reported");
}

#[test]
fn views_launch_on_their_range_only() {
    run("views_launch_on_their_range_only");
}

#[test]
fn gemm_on_views_matches_cpu() {
    run("gemm_on_views_matches_cpu");
}

#[test]
fn utterance_norm_matches_cpu() {
    run("utterance_norm_matches_cpu");
}

#[test]
fn ema_update_matches_cpu_exactly() {
    run("ema_update_matches_cpu_exactly");
}
