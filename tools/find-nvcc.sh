#!/usr/bin/env bash
# Prints the nvcc that build.rs would use (NVCC, CUDA_PATH/CUDA_HOME, PATH, .tools/cuda), or
# nothing and exit 1 when there is none. Installs nothing.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${NVCC:-}" ]]; then echo "$NVCC"; exit 0; fi
for d in "${CUDA_PATH:-}" "${CUDA_HOME:-}"; do
    if [[ -n "$d" && -f "$d/bin/nvcc" ]]; then echo "$d/bin/nvcc"; exit 0; fi
done
if p="$(command -v nvcc)"; then echo "$p"; exit 0; fi
if [[ -f "$ROOT/.tools/cuda/bin/nvcc" ]]; then echo "$ROOT/.tools/cuda/bin/nvcc"; exit 0; fi
exit 1
