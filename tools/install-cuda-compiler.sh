#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc + NVVM + headers) from NVIDIA's PyPI wheels into the
# project-local, git-ignored folder .tools/cuda, and prints the nvcc path on stdout.
# Idempotent: a second run with the same version does nothing but print the path.
# No GPU and no system CUDA needed; nvcc uses the system g++ as host compiler.
#
#   bash tools/install-cuda-compiler.sh          # -> /path/to/.tools/cuda/bin/nvcc
#   CUDA_WHEEL_VERSION=13.0.88 bash tools/...    # pin another (matching) version
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VER="${CUDA_WHEEL_VERSION:-13.0.88}"
DEST="$ROOT/.tools/cuda"
PYPKG="$DEST/wheels"   # pip --target
STAMP="$DEST/.installed-$VER"
PY="${PYTHON:-python3}"

if [[ -f "$STAMP" && -x "$DEST/bin/nvcc" ]]; then
    echo "$DEST/bin/nvcc"
    exit 0
fi

echo "installing CUDA compiler wheels $VER into $DEST" >&2
rm -rf "$DEST"
mkdir -p "$PYPKG"
"$PY" -m pip install --quiet --no-deps --disable-pip-version-check --root-user-action=ignore --target "$PYPKG" \
    "nvidia-cuda-nvcc==$VER" "nvidia-nvvm==$VER" "nvidia-cuda-runtime==$VER" \
    "nvidia-cuda-crt==$VER" >&2

# The wheels unpack under nvidia/cu13 (CUDA 13) or nvidia/cuda_* (older): find the folder
# that holds bin/nvcc and the one(s) holding include/ and nvvm/.
NVCC_BIN="$(find "$PYPKG/nvidia" -type f -name nvcc -path '*/bin/*' | head -n1)"
[[ -n "$NVCC_BIN" ]] || { echo "error: no bin/nvcc in the nvidia-cuda-nvcc wheel" >&2; exit 1; }

# Assemble one CUDA-toolkit-shaped tree: bin/ include/ nvvm/ lib64/ (symlinks into the wheels),
# merging every wheel's include/ so crt/ headers sit next to cuda_runtime.h.
mkdir -p "$DEST/bin" "$DEST/include" "$DEST/lib64"
for d in $(find "$PYPKG/nvidia" -mindepth 1 -maxdepth 3 -type d -name bin); do
    for f in "$d"/*; do ln -sf "$f" "$DEST/bin/$(basename "$f")"; done
done
for d in $(find "$PYPKG/nvidia" -mindepth 1 -maxdepth 3 -type d -name include); do
    cp -rs "$d"/. "$DEST/include/" 2>/dev/null || true
done
for d in $(find "$PYPKG/nvidia" -mindepth 1 -maxdepth 3 -type d \( -name lib -o -name lib64 \)); do
    for f in "$d"/*; do ln -sf "$f" "$DEST/lib64/$(basename "$f")"; done
done
NVVM="$(find "$PYPKG/nvidia" -mindepth 1 -maxdepth 3 -type d -name nvvm | head -n1)"
[[ -n "$NVVM" ]] || { echo "error: no nvvm/ in the nvidia-nvvm wheel" >&2; exit 1; }
ln -sfn "$NVVM" "$DEST/nvvm"
# nvcc finds nvvm/ and include/ relative to its own real location, via nvcc.profile next to it
# (TOP = the real bin/..). Replace the bin/nvcc symlink by a copy plus our own profile.
rm -f "$DEST/bin/nvcc" "$DEST/bin/nvcc.profile"
cp "$NVCC_BIN" "$DEST/bin/nvcc"
chmod +x "$DEST/bin/nvcc" "$DEST"/bin/* 2>/dev/null || true
cat > "$DEST/bin/nvcc.profile" <<'PROF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64" $(_SPACE_)
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
PROF

# Smoke test: PTX and cubin for a trivial kernel, no GPU needed.
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
printf 'extern "C" __global__ void k(float* x){ x[threadIdx.x] *= 2.0f; }\n' > "$T/k.cu"
"$DEST/bin/nvcc" -ptx -arch=compute_89 "$T/k.cu" -o "$T/k.ptx" >&2
"$DEST/bin/nvcc" -cubin -arch=sm_89 "$T/k.cu" -o "$T/k89.cubin" >&2
"$DEST/bin/nvcc" -cubin -arch=sm_90 "$T/k.cu" -o "$T/k90.cubin" >&2
touch "$STAMP"
# build.rs reruns when kernels/ changes; touching the folder makes the next cargo build pick up
# the newly installed nvcc.
touch "$ROOT/kernels"
echo "$DEST/bin/nvcc"
