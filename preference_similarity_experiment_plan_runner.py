"""Runs similarity-quantile preference-training plans (docs/dataset_level.md).  Usage: python preference_similarity_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run] [--rerun]"""
from common.runner import main
from preference_similarity.experiment import FAMILY

if __name__ == "__main__":
    raise SystemExit(main(FAMILY))
