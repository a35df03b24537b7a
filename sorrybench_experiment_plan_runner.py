"""Runs SORRY-Bench preference-training plans (DPO/IPO + refusal rates; docs/sorrybench.md).  Usage: python sorrybench_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run] [--rerun]"""
from common.runner import main
from sorrybench.experiment import FAMILY

if __name__ == "__main__":
    raise SystemExit(main(FAMILY))
