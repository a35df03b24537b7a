"""Reference command (Razin et al. 2025, Sec. 5): DPO on the preference pairs around a similarity quantile.

    python similarity_measures_experiment_runner.py --run_name olmo_q0 --model tiny-gpt2 \
        --preference_similarity_path outputs/pref_similarity/.../results_samples.pt \
        --use_samples_with_preference_similarity_quantile 0 --pref_similarity_measure ches_scores \
        --preference_dataset_path HuggingFaceH4/ultrafeedback_binarized --seed -1 --wandb_project ultrafeedback_dpo \
        --preference_num_samples 512 --batch_size_per_gpu_proc 4 --gradient_accumulation_steps 8 --kl_coeff 0.1 \
        --learning_rate 1e-7 --num_train_epochs 1 --eval_every_epochs 1 --save_every_epochs -1

Writes `<output_dir>/<wandb_project>/<run_name>_quantile_<q>_<time>/` (the plan runner's files plus
`eval_metrics.jsonl`, whose `eval_metrics/train/preferred_logprobs_change_mean` is the preferred log-prob change).
The flags become one run of `preference_similarity_experiment_plan_runner.py` (rules in `common/single_run.py`).
"""

from __future__ import annotations

import argparse

from common.single_run import (ReferenceDefaults, add_dataset_training_flags, dataset_training_fields, run_dir_name,
                               run_single)
from preference_similarity.experiment import FAMILY

DEFAULTS = ReferenceDefaults(wandb_project="common_dpo", model="allenai/OLMo-1B", learning_rate=1e-7, quantile=1.0,
                             preference_num_samples=512)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_training_flags(parser, DEFAULTS)
    parser.add_argument("--preference_dataset_path", default="HuggingFaceH4/ultrafeedback_binarized",
                        help="Hub id or local preference file")
    parser.add_argument("--dataset_format", default="ultrafeedback",
                        help="ultrafeedback, prompt_chosen_rejected, hh_rlhf or sorrybench_prefs "
                             "(not a reference flag)")
    parser.add_argument("--dataset_split", default="train_prefs", help="Hub split (ignored for local files)")
    args = parser.parse_args(argv)
    values, ignored = dataset_training_fields(args)
    values.update(dataset=args.preference_dataset_path, dataset_format=args.dataset_format,
                  dataset_split=args.dataset_split)
    name = run_dir_name(args.run_name, args.use_samples_with_preference_similarity_quantile)
    return run_single(FAMILY, values, ignored, f"{args.output_dir}/{args.wandb_project}", name,
                      {"dataset": "preference_dataset_path", "dataset_format": "dataset_format"})


if __name__ == "__main__":
    raise SystemExit(main())
