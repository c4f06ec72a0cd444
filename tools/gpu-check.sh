#!/usr/bin/env bash
# The GPU machine's whole check in one call, from the folder tools/gpu-bundle.sh writes
# (.gpu-bundle/: the stripped ser-engine with every kernel embedded, this script, the PyTorch
# benchmark). Needs nothing there but the NVIDIA driver and, for cuBLAS/cuDNN and the PyTorch
# comparison, Python's nvidia-cublas / nvidia-cudnn-cu13 packages and torch: no Rust, no
# network, no nvcc.
#
#   bash .gpu-bundle/gpu-check.sh [--device cuda|sim] [--quick] [--out DIR]
#
# Steps (every step runs; each gets a verdict; exit 1 if any failed):
#   info, nvidia-smi; every device-vs-CPU check (`ser-engine check`) with cuDNN + cuBLAS, then
#   with our own conv and GEMM kernels; compute-sanitizer memcheck, racecheck, initcheck and
#   synccheck over `check --quick` (front end with noise and SpecAugment, training steps, eval;
#   the check prints which kernels it never launched); then, without --quick: gradcheck,
#   3 epochs on the demo corpus on cuda and on cpu with the same seed, bench train --profile at
#   batch 16, 32 and 256, the front end's audio-s/s, and tools/pytorch_bench.py --device cuda.
# --device sim runs the same script on the sim (CI does, with --quick), where the sanitizer
# steps and the PyTorch GPU comparison are skipped.
# Files in OUT (default ./gpu-check-out, at most 8): summary.txt (written first, one line per
# step), info.txt, checks.txt, sanitizers.txt, gradcheck.txt, train.txt, bench.txt, log.txt.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${SER_ENGINE:-$HERE/ser-engine}"
DEVICE=cuda
QUICK=0
OUT="${OUT:-./gpu-check-out}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "usage: gpu-check.sh [--device cuda|sim] [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
done
[[ "$DEVICE" == cuda || "$DEVICE" == sim ]] || { echo "error: --device must be cuda or sim, not '$DEVICE'" >&2; exit 2; }
[[ -x "$BIN" ]] || { echo "error: no executable $BIN (run tools/gpu-bundle.sh first)" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/log.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
T_START=$SECONDS
{
    echo "gpu-check $(date -u '+%Y-%m-%d %H:%M UTC') device $DEVICE$([[ $QUICK == 1 ]] && echo ' --quick')"
    [[ -f "$HERE/manifest.txt" ]] && sed 's/^/bundle: /' "$HERE/manifest.txt"
} > "$SUMMARY"
: > "$LOG"
note() { echo "$*" | tee -a "$SUMMARY"; }

# --- cuBLAS / cuDNN: the loader path first, else Python's nvidia packages ------------------
python_nvidia_dirs() {
    python3 -c 'import nvidia, sys; sys.stdout.write("\n".join(nvidia.__path__))' 2>/dev/null
    echo
    ls -d /usr/lib/python3*/site-packages/nvidia /usr/local/lib/python3*/dist-packages/nvidia \
        /usr/lib/python3/dist-packages/nvidia 2>/dev/null
}
find_lib() { # $1 package dir name, $2.. file names in order of preference
    local pkg="$1"; shift
    local f d
    for f in "$@"; do
        if ldconfig -p 2>/dev/null | grep -q " $f "; then
            echo "system $(ldconfig -p | grep " $f " | head -n1 | sed 's/.*=> //')"; return 0
        fi
    done
    while read -r d; do
        [[ -n "$d" ]] || continue
        for f in "$@"; do
            if [[ -f "$d/$pkg/lib/$f" ]]; then echo "python $d/$pkg/lib/$f"; return 0; fi
        done
    done < <(python_nvidia_dirs)
    return 1
}
if [[ "$DEVICE" == cuda ]]; then
    for spec in "cuBLAS cublas libcublas.so.13 libcublas.so.12" "cuDNN cudnn libcudnn.so.9"; do
        read -r label pkg files <<< "$spec"
        # shellcheck disable=SC2086
        if hit="$(find_lib "$pkg" $files)"; then
            where="${hit#* }"
            if [[ "$hit" == python* ]]; then
                export LD_LIBRARY_PATH="$(dirname "$where")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                note "$label: $where (Python package, added to LD_LIBRARY_PATH)"
            else
                note "$label: $where (system loader path)"
            fi
        else
            note "$label: NOT FOUND (loader path and Python nvidia packages); $([[ $label == cuBLAS ]] && echo 'GEMMs use our kernels' || echo 'convolutions use our kernels')"
        fi
    done
    if SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)" && [[ -n "$SAN" ]]; then
        note "compute-sanitizer: $SAN"
    else
        SAN=""
        note "compute-sanitizer: not found"
    fi
fi

NAMES=()
RESULTS=()
# step NAME FILE CMD...: runs CMD (stdout+stderr appended to OUT/FILE and log.txt), records
# ok / FAILED (exit code) and the seconds it took.
step() {
    local name="$1" file="$2"
    shift 2
    local t0=$SECONDS rc
    echo "== $name: $*" | tee -a "$LOG" >> "$OUT/$file"
    "$@" 2>&1 | tee -a "$OUT/$file" >> "$LOG"
    rc=${PIPESTATUS[0]}
    local verdict=ok
    [[ $rc == 0 ]] || verdict="FAILED (exit $rc)"
    [[ $rc == 124 ]] && verdict="FAILED (timed out)"
    NAMES+=("$name")
    RESULTS+=("$verdict")
    note "$(printf '%-44s %-20s %4ds' "$name" "$verdict" $((SECONDS - t0)))"
}
skip() {
    NAMES+=("$1")
    RESULTS+=("skipped")
    note "$(printf '%-44s %-20s (%s)' "$1" skipped "$2")"
}

D=(--device "$DEVICE")
step "info" info.txt "$BIN" info
if [[ "$DEVICE" == cuda ]]; then
    step "nvidia-smi" info.txt nvidia-smi
    step "checks (cuDNN + cuBLAS)" checks.txt env SER_REQUIRE_CUDNN="${SER_REQUIRE_CUDNN:-0}" "$BIN" "${D[@]}" check
    step "checks (our conv + GEMM kernels)" checks.txt env SER_NO_CUDNN=1 SER_NO_CUBLAS=1 "$BIN" "${D[@]}" check
    grep -h '^checks:\|^kernels launched' "$OUT/checks.txt" | sed 's/^/  /' >> "$SUMMARY"
    if [[ -n "$SAN" ]]; then
        # our kernels only (cuDNN and cuBLAS internals are not ours to sanitize); each tool
        # bounded so the whole run stays inside the device time
        limit=$([[ $QUICK == 1 ]] && echo 25 || echo 60)
        for tool in memcheck racecheck initcheck synccheck; do
            step "compute-sanitizer $tool" sanitizers.txt timeout "$limit" env SER_NO_CUDNN=1 SER_NO_CUBLAS=1 \
                "$SAN" --tool "$tool" --error-exitcode 99 --print-limit 20 "$BIN" "${D[@]}" check --quick
        done
        grep -h 'ERROR SUMMARY\|never launched' "$OUT/sanitizers.txt" | sed 's/^/  /' >> "$SUMMARY"
    else
        skip "compute-sanitizer" "not installed"
    fi
else
    step "checks (sim$([[ $QUICK == 1 ]] && echo ', --quick'))" checks.txt "$BIN" "${D[@]}" check $([[ $QUICK == 1 ]] && echo --quick)
    grep -h '^checks:\|^kernels launched' "$OUT/checks.txt" | sed 's/^/  /' >> "$SUMMARY"
    skip "compute-sanitizer" "needs a GPU"
fi

if [[ $QUICK == 0 ]]; then
    step "gradcheck --device $DEVICE" gradcheck.txt "$BIN" "${D[@]}" gradcheck
    step "demo corpus" train.txt "$BIN" synth --out "$WORK/demo"
    # sim is too slow for the full model: a small one (hidden options) there
    SMALL=()
    [[ "$DEVICE" == sim ]] && SMALL=(--channels 4,4,4 --fc-size 8 --hidden-size 8 --n-mels 32)
    for dv in "$DEVICE" cpu; do
        step "train 3 epochs on $dv (seed 7)" train.txt "$BIN" --device "$dv" --seed 7 train \
            --data "$WORK/demo" --epochs 3 --out "$WORK/run-$dv" "${SMALL[@]}"
        echo "  loss curve on $dv:" >> "$SUMMARY"
        awk -v d="$dv" '/^== train 3 epochs on/ { on = index($0, "on " d " ") > 0 } on && /^epoch/' \
            "$OUT/train.txt" | sed 's/^/    /' >> "$SUMMARY"
    done
    if [[ "$DEVICE" == cuda ]]; then
        for b in 16 32 256; do
            step "bench train --profile, batch $b" bench.txt "$BIN" "${D[@]}" bench train --profile --batch "$b" --steps 10
        done
        grep -h '^training\|^inference\|^GEMM\|^cuda:' "$OUT/bench.txt" | sed 's/^/  /' >> "$SUMMARY"
        step "front end throughput" bench.txt "$BIN" "${D[@]}" features --bench --seconds 600
        grep -h 'audio-s/s\|audio seconds' "$OUT/bench.txt" | sed 's/^/  /' >> "$SUMMARY"
        if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
            for b in 16 32 256; do
                step "pytorch_bench --device cuda, batch $b" bench.txt python3 "$HERE/pytorch_bench.py" \
                    --device cuda --batch "$b" --iters 10 --repeats 3
            done
            # ours vs PyTorch + cuDNN, training samples/s, same model and batch
            for b in 16 32 256; do
                ours=$(awk -v b="$b" '/^== bench train --profile, batch/ { on = ($NF == b) } on && /^training/ { print $2; exit }' "$OUT/bench.txt")
                torch=$(grep "^RESULT device=cuda batch=$b " "$OUT/bench.txt" | sed 's/.*plain_train=\([0-9.]*\).*/\1/' | head -n1)
                if [[ -n "$ours" && -n "$torch" ]]; then
                    note "  batch $b: ser-engine $ours samples/s, PyTorch+cuDNN $torch samples/s, ratio $(awk -v a="$ours" -v t="$torch" 'BEGIN { printf "%.2f", a / t }')"
                fi
            done
        else
            skip "pytorch_bench --device cuda" "python3 has no torch with CUDA"
        fi
    else
        skip "bench, front end, pytorch_bench" "timings need a GPU"
    fi
fi

failed=0
for i in "${!NAMES[@]}"; do
    [[ "${RESULTS[$i]}" == ok || "${RESULTS[$i]}" == skipped ]] || failed=1
done
note "total $((SECONDS - T_START)) s; $([[ $failed == 0 ]] && echo 'all steps ok' || echo 'SOME STEPS FAILED'); files in $OUT"
exit $failed
