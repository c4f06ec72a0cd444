#!/usr/bin/env bash
# Packs the CUDA kernels for a GPU machine without network or nvcc: builds them strictly (as
# tools/check-kernels.sh: -Werror, no spills) with the nvcc found here (installed from PyPI
# wheels if there is none), then copies the fatbins, the ptxas report/table and a manifest
# (nvcc version, date, a hash of every file under kernels/) into the git-ignored folder
# .kernels-prebuilt/. Carry that folder with the tree; build.rs embeds the fatbins when it finds
# no nvcc and the hashes still match the sources.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
NVCC="$(bash tools/find-nvcc.sh || bash tools/install-cuda-compiler.sh)"
export NVCC
bash tools/check-kernels.sh
# check-kernels.sh just ran build.rs with nvcc: its OUT_DIR is the newest one with sources
OUT="$(dirname "$(ls -t target/release/build/ser-engine-*/out/kernel-sources.txt | head -n1)")"
DEST="$ROOT/.kernels-prebuilt"
rm -rf "$DEST"
mkdir -p "$DEST"
for f in kernels/*.cu; do
    cp "$OUT/$(basename "$f" .cu).fatbin" "$DEST/"
done
cp "$OUT/ptxas-report.txt" "$OUT/ptxas-table.txt" "$DEST/"
{
    echo "# CUDA kernels packed by tools/pack-kernels.sh; build.rs uses them only if every source line matches"
    echo "nvcc: $("$NVCC" --version | grep -o 'V[0-9][0-9.]*' | tail -n1 | tr -d V)"
    echo "built: $(date -u '+%Y-%m-%d %H:%M UTC')"
    cat "$OUT/kernel-sources.txt"
} > "$DEST/manifest.txt"
# build.rs watches the folder only once it exists: make the next build look again
touch kernels
echo "packed $(ls "$DEST"/*.fatbin | wc -l) fatbins into $DEST: $(du -sh "$DEST" | cut -f1)"
