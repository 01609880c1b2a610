#!/usr/bin/env bash
# Debian's Chromium for the real-browser tests (Playwright drives it; no browser download).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[browser] installing Debian's chromium"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "[browser] could not install chromium; browser tests will be skipped"
else
    echo "[browser] no /usr/bin/chromium and no root apt-get; browser tests will be skipped"
fi
