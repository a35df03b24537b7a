"""Similarity-quantile DPO runs (Razin et al. 2025, Sec. 5 / Figure 2): train on the pairs whose CHES (or another
similarity measure) lies around a quantile, and measure how much the preferred log-probs fall.

    python preference_similarity_experiment_plan_runner.py \
        --plan_config_path preference_similarity/experiments_plans/smollm2_ultrafeedback_cpu.json

Config: `preference_training.config.PreferenceTrainingConfig` (all fields documented there).
Outputs per run, besides the runner's files: `eval_metrics.jsonl`, `displacement_{train,test}.safetensors`, and in
`summary.json` the selection (`selection/...`), the final `eval_metrics/<split>/...`, `tracker/<split>/...`.
"""

from __future__ import annotations

from common.config import ExperimentFamily, RunContext
from preference_training.config import PreferenceTrainingConfig
from preference_training.selection import select_examples
from preference_training.trainer import train_preference_model


def run_preference_similarity_experiment(config: PreferenceTrainingConfig, ctx: RunContext) -> dict:
    """Select the subset (similarity window or random pool), train on it, return the summary."""
    selected = select_examples(config)
    result = train_preference_model(config, selected.train, selected.eval, ctx)
    return {**selected.info, **result.summary}


FAMILY = ExperimentFamily(name="preference_similarity", config_cls=PreferenceTrainingConfig,
                          run=run_preference_similarity_experiment)
