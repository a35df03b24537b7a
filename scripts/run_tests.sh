#!/usr/bin/env bash
# Install what is needed (project environment, scripts/install.sh), then run the whole test suite on 2 worker
# processes (CPU only, no network). Tests that need the real public data sets read them through the
# data-location rule (data_files/, else $LD_DATA_DIR) and are skipped, with the reason, when they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/install.sh | tail -n 1)"
# One thread per pytest worker: two workers already use both cores, and oversubscription is 5-15x slower.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline MPLBACKEND=Agg OMP_NUM_THREADS=1
exec "$PY" -m pytest -n 2 -q tests "$@"
