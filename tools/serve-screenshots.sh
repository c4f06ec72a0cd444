#!/usr/bin/env bash
# The screenshots of `ser-engine serve` in docs/guide.md (docs/serve-*.png), of real runs:
# the demo run (`ser-engine train` with its defaults), the same at --lr 3e-3 (for the compare
# view) and a short `sweep --table3` on the demo corpus (2 folds, 3 epochs: a picture of the
# chart, not a result). Then tests/serve_browser.rs `docs_screenshots` opens each view in
# chromium (tools/install-chromium.sh) and writes the PNGs. Takes several minutes on 2 cores.
#
#   bash tools/serve-screenshots.sh [OUT_DIR]     # default: docs/
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-docs}")"
cargo build --release
bin=target/release/ser-engine
runs="$(mktemp -d)/runs"
trap 'rm -rf "$(dirname "$runs")"' EXIT
"$bin" -q --device cpu train --out "$runs/demo"
"$bin" -q --device cpu train --out "$runs/demo-lr3e-3" --lr 3e-3
"$bin" -q --device cpu sweep --table3 --folds 2 --epochs 3 --out "$runs/table3"
SER_SCREENSHOT_RUNS="$runs" SER_SCREENSHOT_OUT="$out" \
  cargo test --release --test serve_browser -- --ignored --exact docs_screenshots
ls -l "$out"/serve-*.png
