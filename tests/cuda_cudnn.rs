//! The cuDNN convolution path (src/engine/cudnn/).
//!
//! - On every machine: the masking that restores clip-length semantics around cuDNN's
//!   length-unaware convolution ([`masked_conv_forward`] / [`masked_conv_backward`] and the
//!   kernels `cnn_time_mask`, `cnn_bias_mask`, `cnn_bias_grad_partial`) is run on `sim` (shuffled
//!   thread order) with our kernels standing in for cuDNN ([`KernelDenseConv`]), against the CPU
//!   reference `cpu::conv`, with garbage in the padding of x and dy.
//! - On a machine with an NVIDIA GPU and libcudnn: cuDNN itself, op by op against the CPU
//!   reference and against our kernels on the same GPU, bit-for-bit repeatability (the chosen
//!   algorithms are deterministic), no allocation on a repeated call of a seen shape, and the
//!   composed CNN forward/backward with cuDNN against our kernels. Without a GPU these print a
//!   skip notice and return; with a GPU but no cuDNN they skip too, unless SER_REQUIRE_CUDNN=1
//!   (tools/gpu-check.sh sets it), which makes a missing cuDNN a failure.
//!
//! Tolerances (as tests/sim_cnn.rs): the oracle runs in f64 on the same f32 inputs, so the error
//! is the device's f32 rounding: forward sums of ≤ a few hundred products stay ≤ 1e-5 relative
//! norm; gradients (longer sums over batch and positions) ≤ 1e-4. cuDNN vs our kernels: each is
//! within those bounds of the oracle, so they are compared with the same bounds (their
//! difference is bounded by the sum of both errors, and measured far below). Masked positions
//! must be exactly 0 on every path.
//!
//! The checks themselves live in src/engine/checks/cudnn.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

fn run(name: &str) {
    ser_engine::engine::checks::run_test("cudnn", name);
}

#[test]
fn masking_around_a_dense_conv_matches_cpu_on_sim() {
    run("masking_around_a_dense_conv_matches_cpu_on_sim");
}

#[test]
fn cudnn_backend_on_sim_is_an_error_and_auto_uses_our_kernels() {
    run("cudnn_backend_on_sim_is_an_error_and_auto_uses_our_kernels");
}

#[test]
fn cudnn_conv_matches_cpu_and_our_kernels_on_gpu() {
    run("cudnn_conv_matches_cpu_and_our_kernels_on_gpu");
}

#[test]
fn cudnn_composed_cnn_matches_our_kernels_on_gpu() {
    run("cudnn_composed_cnn_matches_our_kernels_on_gpu");
}
