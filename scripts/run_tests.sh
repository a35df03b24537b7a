#!/usr/bin/env bash
# Install what is needed, then run the whole test suite on 2 worker processes (CPU only, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# One thread per pytest worker: two workers already use both cores, and oversubscription is 5-15x slower.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline MPLBACKEND=Agg OMP_NUM_THREADS=1
exec "${PYTHON:-python3}" -m pytest -n 2 -q tests "$@"
