"""Reference command (Razin et al. 2025, Sec. 6): DPO/IPO on a SORRY-Bench preference data set, then refusal rates.

    python sorrybench_experiment_runner.py --run_name smollm2_dpo --model smollm2-135m-instruct \
        --dataset_path data_files/sorrybench/smollm2-135m-instruct --wandb_project sorrybench_dpo \
        --batch_size_per_gpu_proc 4 --gradient_accumulation_steps 8 --learning_rate 5e-6 --num_train_epochs 1 \
        --eval_every_epochs 1 --save_every_epochs -1 --refusal_eval_batch_size 16 --sft_coeff 0

`--dataset_path` is the directory holding `train.jsonl` and `test.jsonl` (written by
`sorrybench_create_preferences_dataset.py`). Writes `<output_dir>/<wandb_project>/<run_name>_<time>/` (the plan
runner's files, `eval_metrics.jsonl` with `eval_metrics/train/preferred_logprobs_change_mean`, `refusal_eval/`).
The flags become one run of `sorrybench_experiment_plan_runner.py` (rules in `common/single_run.py`).
"""

from __future__ import annotations

import argparse

from common.cli import add_bool_flag, fail
from common.single_run import (ReferenceDefaults, add_dataset_training_flags, dataset_training_fields, run_dir_name,
                               run_single)
from sorrybench.experiment import FAMILY

DEFAULTS = ReferenceDefaults(wandb_project="sorrybench_dpo", model="meta-llama/Meta-Llama-3-8B-Instruct",
                             learning_rate=5e-6, quantile=0.0, preference_num_samples=-1)
# Reference subset flags that change which pairs are trained on and have no counterpart here yet.
UNSUPPORTED_SUBSET_FLAGS = ("use_only_two_refusal_samples", "use_only_two_non_refusal_samples",
                            "use_only_one_of_each_samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_training_flags(parser, DEFAULTS)
    parser.add_argument("--dataset_path", default="", help="directory with train.jsonl and test.jsonl; "
                        "default: the SorryBenchConfig data set")
    add_bool_flag(parser, "use_gold_preferences", default=False, help="train on the gold refusal/compliance pairs")
    parser.add_argument("--refusal_eval_batch_size", type=int, default=16,
                        help="prompts per generation call and responses per judge call of the refusal evaluation")
    parser.add_argument("--refusal_max_new_tokens", type=int, default=None,
                        help="tokens per evaluated response (not a reference flag); default: SorryBenchConfig's")
    for flag in UNSUPPORTED_SUBSET_FLAGS:
        add_bool_flag(parser, flag, default=False, help="not supported here (exit 2 when given)")
    args = parser.parse_args(argv)
    given = [flag for flag in UNSUPPORTED_SUBSET_FLAGS if getattr(args, flag)]
    if given:
        fail(f"--{given[0]} is not supported by this toolkit (it filters pairs by their judged labels); make a data "
             "set with the pairs you want (sorrybench_create_preferences_dataset.py) and pass it as --dataset_path")
    values, ignored = dataset_training_fields(args)
    values.update(refusal_generation_batch_size=args.refusal_eval_batch_size,
                  refusal_judge_batch_size=args.refusal_eval_batch_size)
    if args.refusal_max_new_tokens is not None:
        values["refusal_max_new_tokens"] = args.refusal_max_new_tokens
    if args.dataset_path:
        values.update(dataset=f"{args.dataset_path}/train.jsonl", eval_dataset=f"{args.dataset_path}/test.jsonl")
    if args.use_gold_preferences:  # the pairs' gold_refusal / gold_non_refusal columns (SorryBenchConfig)
        values["use_gold_preferences"] = True
    return run_single(FAMILY, values, ignored, f"{args.output_dir}/{args.wandb_project}", run_dir_name(args.run_name),
                      {"dataset": "dataset_path", "eval_dataset": "dataset_path"})


if __name__ == "__main__":
    raise SystemExit(main())
