#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the browser tests of `ser-engine serve`
# (tests/serve_browser.rs). Needs root (apt-get); does nothing when both are installed.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null || true)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tools/install-chromium.sh: needs root for apt-get (or install chromium and chromium-driver yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "installed: $(chromium --version 2>/dev/null || true)"
