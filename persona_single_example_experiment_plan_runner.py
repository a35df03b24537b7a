"""Persona single-token experiments.  Usage: python persona_single_example_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run] [--rerun]"""
from common.runner import main
from persona_experiments.trainer import FAMILY

if __name__ == "__main__":
    raise SystemExit(main(FAMILY))
