#!/usr/bin/env bash
# Builds the git-ignored folder .gpu-bundle/ (at most 48 MiB) for a GPU machine that has no
# Rust, no nvcc and no network: the stripped x86-64 release ser-engine with the kernels for
# every supported architecture embedded (build.rs: sm_75, sm_80, sm_86, sm_89, sm_90 cubins +
# PTX, built strictly by tools/check-kernels.sh: -Werror, no register spills), gpu-check.sh,
# the PyTorch benchmark and a manifest. Installs nvcc from PyPI wheels
# (tools/install-cuda-compiler.sh) when none is found. Then, there:
#   bash .gpu-bundle/gpu-check.sh            (or --quick; --device sim runs it here)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LIMIT_MIB=48
unset SER_NO_NVCC
NVCC="$(bash tools/find-nvcc.sh || bash tools/install-cuda-compiler.sh)"
export NVCC SER_KERNELS_STRICT=1
bash tools/check-kernels.sh
cargo build --release --bin ser-engine
grep -q 'KERNELS_COMPILED: bool = true' "$(ls -t target/release/build/ser-engine-*/out/kernels_table.rs | head -n1)" \
    || { echo "error: the build has no CUDA kernels" >&2; exit 1; }
TMP="$ROOT/.gpu-bundle.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"
strip -o "$TMP/ser-engine" target/release/ser-engine
cp tools/gpu-check.sh "$TMP/gpu-check.sh"
cp tools/pytorch_bench.py tools/pytorch_reference.py "$TMP/"
chmod +x "$TMP/ser-engine" "$TMP/gpu-check.sh"
{
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.gpu-bundle' 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m)"
    "$TMP/ser-engine" info 2>/dev/null | grep -E '^(nvcc|kernel images):' || true
} > "$TMP/manifest.txt"
size_kib=$(du -sk "$TMP" | cut -f1)
if (( size_kib > LIMIT_MIB * 1024 )); then
    echo "error: the bundle is $((size_kib / 1024)) MiB, over $LIMIT_MIB MiB" >&2
    exit 1
fi
rm -rf .gpu-bundle
mv "$TMP" .gpu-bundle
echo "wrote .gpu-bundle/ ($(du -sh .gpu-bundle | cut -f1)):"
ls -l .gpu-bundle
cat .gpu-bundle/manifest.txt
