#!/usr/bin/env bash
# Create .venv (if missing) and install shortcut-detect with the given extras into it.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python_bin="${PYTHON:-python3}"
# The torch build this project is developed against; override for another platform,
# e.g. TORCH_SPEC="torch torchvision" for whatever your index serves.
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv with $($python_bin --version)"
    "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -q)
# The torch spec installed last is remembered, so a different TORCH_SPEC is honoured
# (reinstalled) instead of silently ignored once .venv has torch.
torch_stamp=".venv/.torch-spec"
installed_spec="$(cat "$torch_stamp" 2>/dev/null || true)"
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "[bootstrap] installing $torch_spec (a large download the first time)"
    # shellcheck disable=SC2086
    "${pip[@]}" $torch_spec
    printf '%s\n' "$torch_spec" >"$torch_stamp"
elif [ "$installed_spec" != "$torch_spec" ]; then
    if [ -z "$installed_spec" ] && [ -z "${TORCH_SPEC:-}" ]; then
        # torch was there before this script kept a stamp and no spec was asked for:
        # keep it, and remember the default spec as installed.
        printf '%s\n' "$torch_spec" >"$torch_stamp"
    else
        echo "[bootstrap] TORCH_SPEC changed (${installed_spec:-unknown} -> $torch_spec): reinstalling"
        # shellcheck disable=SC2086
        "${pip[@]}" --force-reinstall --no-deps $torch_spec
        # shellcheck disable=SC2086
        "${pip[@]}" $torch_spec
        printf '%s\n' "$torch_spec" >"$torch_stamp"
    fi
fi
stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[bootstrap] installing shortcut-detect[$extras]"
    "${pip[@]}" -e ".[$extras]"
    touch "$stamp"
fi
