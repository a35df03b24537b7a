"""Create a SORRY-Bench preference data set (Razin et al. 2025, Sec. 6): sample responses, judge, pair, split.

    python sorrybench_create_preferences_dataset.py --model smollm2-135m-instruct \
        --output_dir data_files/sorrybench/smollm2-135m-instruct --max_new_tokens 64 --num_responses 2

In:  SORRY-Bench prompts (default data_files/sorrybench/sorry_bench_202406.csv or under $LD_DATA_DIR, else the Hub
     id), a model.
Out: <output_dir>/generations.jsonl, judgments.jsonl (resumable), rewards.jsonl (with --reward_model),
     train.jsonl / test.jsonl (`query`, `chosen`, `rejected`, `category`, judge labels and scores, pair type,
     tie-break rule), dataset_info.json (counts, initial refusal rate). See docs/sorrybench.md.
"""

from __future__ import annotations

import argparse
import json

from sorrybench.cli import add_generation_arguments, add_judge_and_device_arguments, generation_settings, resolve_device
from sorrybench.preference_dataset import DatasetOptions, create_preferences_dataset


def parse_args(argv: list[str] | None = None) -> DatasetOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True, help="directory of all outputs (a rerun resumes there)")
    add("--model", default="smollm2-135m-instruct",
        help="built-in name, Hub id or local dir. Default smollm2-135m-instruct")
    add("--prompts_path", default=None, help="SORRY-Bench csv/jsonl or Hub id; default: local copy, else the Hub id")
    add("--num_prompts", type=int, default=None, help="seeded subsample of the prompts; default all")
    add("--categories", nargs="+", default=None, help="keep only these categories (e.g. 1 2 17); default all")
    add("--prompt_seed", type=int, default=0, help="seed of the prompt subsample. Default 0")
    add_generation_arguments(parser, num_responses=2, temperature=1.0)
    add_judge_and_device_arguments(parser)
    add("--reward_model", default=None, help="sequence classifier breaking ties (default: the 'shortest' rule)")
    add("--reward_label_index", type=int, default=0, help="which logit of the reward model is the reward. Default 0")
    add("--gold_refusals_path", default=None, help="gold refusals (.txt pool, or .csv/.jsonl with `refusal`)")
    add("--gold_prompts", default="with_refusal", choices=("with_refusal", "all"),
        help="gold mode: pair only prompts with a model refusal (same pairs, chosen replaced; default) or all")
    add("--reuse_generations_from", default=None,
        help="copy generations.jsonl from this earlier output dir (same settings) instead of regenerating")
    add("--test_fraction", type=float, default=0.15, help="share of pairs in test.jsonl. Default 0.15")
    add("--split_seed", type=int, default=0, help="seed of the train/test split. Default 0")
    args = parser.parse_args(argv)
    return DatasetOptions(
        output_dir=args.output_dir, model=args.model, prompts_path=args.prompts_path, num_prompts=args.num_prompts,
        categories=args.categories, prompt_seed=args.prompt_seed, generation=generation_settings(args),
        judge=args.judge, judge_model=args.judge_model, judge_refusal_label=args.judge_refusal_label,
        judge_batch_size=args.judge_batch_size, reward_model=args.reward_model,
        reward_label_index=args.reward_label_index, gold_refusals_path=args.gold_refusals_path,
        gold_prompts=args.gold_prompts, reuse_generations_from=args.reuse_generations_from,
        test_fraction=args.test_fraction, split_seed=args.split_seed, device=resolve_device(args.device),
        dtype=args.dtype)


def main(argv: list[str] | None = None) -> dict:
    info = create_preferences_dataset(parse_args(argv))
    shown = {k: v for k, v in info.items() if k not in ("options", "initial_refusal_rate_per_category")}
    print(json.dumps(shown, indent=2))
    return info


if __name__ == "__main__":
    main()
