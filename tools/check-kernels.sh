#!/usr/bin/env bash
# CI check of the CUDA kernels without a GPU: installs nvcc from PyPI wheels if missing, builds
# with SER_KERNELS_STRICT=1 (a missing nvcc is an error; nvcc runs with -Werror all-warnings),
# prints the per-kernel ptxas table (registers, shared memory, stack, spills) and fails on any
# spill store.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# an nvcc given in NVCC is used as is (no install)
NVCC_PATH="${NVCC:-$(bash tools/install-cuda-compiler.sh)}"
echo "nvcc: $NVCC_PATH"
export NVCC="$NVCC_PATH" SER_KERNELS_STRICT=1
cargo build --release --lib
# the build script's OUT_DIR of this build: the newest ptxas table
TABLE="$(ls -t target/release/build/ser-engine-*/out/ptxas-table.txt | head -n1)"
REPORT="$(dirname "$TABLE")/ptxas-report.txt"
echo "== ptxas resource usage ($REPORT)"
cat "$TABLE"
rows=$(tail -n +2 "$TABLE" | wc -l)
[[ "$rows" -gt 0 ]] || { echo "error: empty ptxas table" >&2; exit 1; }
if grep -qiE "warning" "$REPORT"; then
    echo "error: nvcc/ptxas warnings:" >&2
    grep -iE "warning" "$REPORT" >&2
    exit 1
fi
spills=$(tail -n +2 "$TABLE" | awk '$6 > 0 { print $1 " (" $2 "): " $6 " bytes spill stores" }')
if [[ -n "$spills" ]]; then
    echo "error: register spills:" >&2
    echo "$spills" >&2
    exit 1
fi
echo "kernels OK: $rows kernel/arch builds, no warnings, no spills"
