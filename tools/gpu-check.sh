#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: install nvcc (PyPI wheels), build the kernels
# strictly, show the devices, run the kernel tests against the real GPU (the same tests as on
# sim, with SER_TEST_DEVICE=cuda) and the kernel benchmarks on both devices.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash tools/check-kernels.sh
export NVCC="$(bash tools/install-cuda-compiler.sh)" SER_KERNELS_STRICT=1
nvidia-smi || true
echo "== device report"
cargo run --release -q -- info || true
echo "== kernel tests on the GPU"
# Every tests/sim_*.rs: on the GPU (SER_TEST_DEVICE=cuda), then on sim.
SIM_TESTS=$(for f in tests/sim_*.rs; do printf -- '--test %s ' "$(basename "$f" .rs)"; done)
SER_TEST_DEVICE=cuda cargo test --release $SIM_TESTS -- --nocapture
echo "== kernel tests on sim"
cargo test --release $SIM_TESTS
echo "== benchmarks"
SER_BENCH_DEVICE=cuda cargo bench --bench kernels
echo "== front end (log-Mel) throughput on the GPU and the CPU"
cargo run --release -q -- --device cuda features --bench --seconds 600
cargo run --release -q -- --device cpu features --bench --seconds 60
