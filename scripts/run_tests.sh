#!/usr/bin/env bash
# Install what is needed, then run the whole test suite on 2 worker processes (CPU only, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline MPLBACKEND=Agg
exec "${PYTHON:-python3}" -m pytest -n 2 -q tests "$@"
