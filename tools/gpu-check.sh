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
SER_TEST_DEVICE=cuda cargo test --release --test sim_kernels --test sim_cnn
echo "== kernel tests on sim"
cargo test --release --test sim_kernels --test sim_shim --test sim_cnn
echo "== benchmarks"
SER_BENCH_DEVICE=cuda cargo bench --bench kernels
