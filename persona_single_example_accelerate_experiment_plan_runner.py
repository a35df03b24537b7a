"""Persona single-token experiments, the reference's multi-GPU entry point (same plans, same flags):

    python persona_single_example_accelerate_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run]

Run as one process it is exactly `persona_single_example_experiment_plan_runner.py`. Under
`accelerate launch --num_processes N persona_single_example_accelerate_experiment_plan_runner.py ...` (or
`torchrun --nproc_per_node N ...`) every process runs the plan and each run trains data-parallel, as described
in docs/scaling_out.md; a model larger than one GPU uses `device_map: "auto"` in one process instead.
"""
from common.runner import main
from persona_experiments.trainer import FAMILY

if __name__ == "__main__":
    raise SystemExit(main(FAMILY))
