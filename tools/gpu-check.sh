#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU, which may have no network: build the kernels
# strictly, show the devices, run the kernel tests against the real GPU (every tests/sim_*.rs
# with SER_TEST_DEVICE=cuda), then on sim, then the benchmarks. Installs nothing: the kernels
# come from the nvcc found here (NVCC, CUDA_PATH/CUDA_HOME, PATH, .tools/cuda), else from
# .kernels-prebuilt/ (made by tools/pack-kernels.sh where nvcc is, carried with the tree).
# Every step runs even if one fails; a summary table at the end, exit 1 if any step failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_NET_OFFLINE=true SER_KERNELS_STRICT=1
if NVCC="$(bash tools/find-nvcc.sh)"; then
    export NVCC
    KERNELS="nvcc $NVCC"
    kernel_step() { bash tools/check-kernels.sh; }
elif [[ -f .kernels-prebuilt/manifest.txt ]]; then
    M=.kernels-prebuilt/manifest.txt
    KERNELS="prebuilt .kernels-prebuilt (nvcc $(sed -n 's/^nvcc: //p' $M), built $(sed -n 's/^built: //p' $M))"
    # strict: stale prebuilt kernels fail the build instead of leaving the cuda device out
    kernel_step() { cargo build --release --lib && cat .kernels-prebuilt/ptxas-table.txt; }
else
    echo "error: no nvcc here (NVCC, CUDA_PATH, CUDA_HOME, PATH, .tools/cuda) and no .kernels-prebuilt/." >&2
    echo "Run 'bash tools/pack-kernels.sh' on a machine with nvcc (or network) before carrying the tree here." >&2
    exit 1
fi
echo "kernels from: $KERNELS"

NAMES=()
RESULTS=()
step() {
    local name="$1"
    shift
    echo "== $name"
    if "$@"; then RESULTS+=("ok"); else RESULTS+=("FAILED"); fi
    NAMES+=("$name")
}
# Every tests/sim_*.rs: on the GPU (SER_TEST_DEVICE=cuda), then on sim.
SIM_TESTS=$(for f in tests/sim_*.rs; do printf -- '--test %s ' "$(basename "$f" .rs)"; done)

step "kernels build (strict)" kernel_step
step "nvidia-smi" nvidia-smi
step "device report" cargo run --release -q -- info
# On cuda the conv stages use cuDNN when it loads (src/engine/cudnn.rs): run the kernel tests
# that way, again with our own conv kernels (SER_NO_CUDNN=1), and cuDNN op by op against the CPU
# and our kernels (a missing libcudnn fails that step; SER_REQUIRE_CUDNN=0 makes it a skip).
step "kernel tests on cuda" env SER_TEST_DEVICE=cuda cargo test --release $SIM_TESTS -- --nocapture
step "kernel tests on cuda, no cuDNN" env SER_TEST_DEVICE=cuda SER_NO_CUDNN=1 cargo test --release $SIM_TESTS
step "cuDNN vs cpu and our kernels" env SER_REQUIRE_CUDNN="${SER_REQUIRE_CUDNN:-1}" cargo test --release --test cuda_cudnn -- --nocapture
step "kernel tests on sim" cargo test --release $SIM_TESTS
step "kernel benchmarks on cuda" env SER_BENCH_DEVICE=cuda cargo bench --bench kernels
step "log-Mel throughput on cuda" cargo run --release -q -- --device cuda features --bench --seconds 600
step "log-Mel throughput on cpu" cargo run --release -q -- --device cpu features --bench --seconds 60

echo
echo "== summary (kernels from: $KERNELS)"
failed=0
for i in "${!NAMES[@]}"; do
    printf '%-32s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
    [[ "${RESULTS[$i]}" == ok ]] || failed=1
done
exit $failed
