"""Create a SORRY-Bench preference data set (Razin et al. 2025, Sec. 6): sample two responses per prompt, judge,
pair (a refusal is preferred when the judge scores differ; ties at random, re-labelled by PairRM with --use_rm),
attach gold preferences, split 85/15. The reference implementation's command runs as it is:

    python sorrybench_create_preferences_dataset.py --model M --use_rm --gpu_id 0 --random_seed 128
    python sorrybench_create_preferences_dataset.py --model smollm2-135m-instruct --max_output_length 48

In:  SORRY-Bench prompts (data_files/sorrybench/sorry_bench_202406.csv by the data-location rule, else the Hub), a
     model; gold preferences from the SORRY-Bench human judgments (Hub, gated) or generic refusals (offline).
Out: --output_dir (default data_files/sorrybench/<model name>/, e.g. data_files/sorrybench/smollm2-135m-instruct/):
     generations.jsonl, judgments.jsonl (resumable), train.jsonl / test.jsonl (the reference's fields `query`,
     `chosen`, `rejected`, `chosen_score`, `rejected_score`, `gold_refusal`, `gold_non_refusal`, plus judge labels,
     pair type, how each pair was decided), dataset_info.json. See docs/sorrybench.md.
Exit status: 0 done; 2 bad flags or missing inputs (nothing generated); 1 empty outcome (e.g. the model never
refused and no gold preferences), with an `error:` line saying what to do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from common.cli import add_bool_flag, fail
from common.data_locations import DATA_FILES_DIR
from sorrybench.cli import add_generation_arguments, add_judge_and_device_arguments, generation_settings, \
    resolve_judge_and_device
from sorrybench.gold import GENERIC_REFUSALS_FILE, GOLD_SOURCES
from sorrybench.preference_dataset import DatasetOptions, EmptyDatasetError, create_preferences_dataset
from sorrybench.reward_models import PAIRRM_NAMES


def model_display_name(model: str) -> str:
    """The last component of a model id or path: "meta-llama/Meta-Llama-3-8B-Instruct" -> "Meta-Llama-3-8B-Instruct"."""
    return Path(model.rstrip("/")).name or model


def default_output_dir(model: str) -> Path:
    """data_files/sorrybench/<model display name>/ (the plans read data_files/sorrybench/smollm2-135m-instruct/)."""
    return DATA_FILES_DIR / "sorrybench" / model_display_name(model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", default=None, help="directory of all outputs; default data_files/sorrybench/<model name>/")
    add("--model", default="smollm2-135m-instruct",
        help="built-in name, Hub id or local dir (reference default: meta-llama/Meta-Llama-3-8B-Instruct). "
             "Default smollm2-135m-instruct")
    add("--prompts_path", default=None, help="SORRY-Bench csv/jsonl or Hub id; default: the data-location rule")
    add("--prompt_styles", nargs="+", default=["base"], help="SORRY-Bench prompt styles; only 'base' is supported")
    add("--num_prompts", type=int, default=None, help="seeded subsample of the prompts; default all")
    add("--categories", nargs="+", default=None, help="keep only these categories (e.g. 1 2 17); default all")
    add("--prompt_seed", type=int, default=0, help="seed of the prompt subsample. Default 0")
    add_generation_arguments(parser, num_responses=2, temperature=1.0, max_new_tokens=512, random_seed=128)
    add_judge_and_device_arguments(parser)
    add_bool_flag(parser, "use_rm", default=False,
                  help="re-label randomly assigned pairs (ties, unknowns) with a reward model (--reward_model)")
    add("--reward_model", default=None,
        help="'pairrm' (PairRM via llm-blender, the reference's) or a Hub id of a sequence-classification reward "
             "model; implies --use_rm. Default pairrm with --use_rm")
    add("--reward_label_index", type=int, default=0, help="which logit of the reward model is the reward. Default 0")
    add("--rm_batch_size", type=int, default=4, help="pairs per reward-model forward. Default 4")
    add("--gold_preferences", default="auto", choices=GOLD_SOURCES,
        help="gold_refusal/gold_non_refusal source: human (SORRY-Bench human judgments, the reference's), generic "
             "(generic refusal + the model's rejected response), none, or auto (human if found, else generic)")
    add("--human_judgments_path", default=None, help="local file or Hub id of the human judgments")
    add("--gold_refusals_path", default=GENERIC_REFUSALS_FILE,
        help=f"generic refusals. Default {GENERIC_REFUSALS_FILE}")
    add("--reuse_generations_from", default=None,
        help="copy generations.jsonl from this earlier output dir (same settings) instead of regenerating")
    add("--test_ratio", "--test_fraction", dest="test_ratio", type=float, default=0.15,
        help="share of pairs in test.jsonl, in [0, 1). Default 0.15")
    return parser


def parse_args(argv: list[str] | None = None) -> DatasetOptions:
    """Options from the command line; any invalid value exits 2 with one `error:` line before anything runs."""
    args = build_parser().parse_args(argv)
    if args.prompt_styles != ["base"]:
        fail(f"--prompt_styles {' '.join(args.prompt_styles)}: only the 'base' prompts are supported "
             "(the data-location rule's csv holds them); drop the flag")
    resolve_judge_and_device(args)
    reward_model = args.reward_model or ("pairrm" if args.use_rm else None)
    try:
        options = DatasetOptions(
            output_dir=str(args.output_dir or default_output_dir(args.model)), model=args.model,
            prompts_path=args.prompts_path, num_prompts=args.num_prompts, categories=args.categories,
            prompt_seed=args.prompt_seed, generation=generation_settings(args), judge=args.judge,
            judge_model=args.judge_model, judge_refusal_label=args.judge_refusal_label,
            judge_batch_size=args.judge_batch_size, reward_model=reward_model,
            reward_label_index=args.reward_label_index, rm_batch_size=args.rm_batch_size,
            gold_preferences=args.gold_preferences, human_judgments_path=args.human_judgments_path,
            gold_refusals_path=args.gold_refusals_path, reuse_generations_from=args.reuse_generations_from,
            test_ratio=args.test_ratio, random_seed=args.random_seed, cache_dir=args.cache_dir, device=args.device,
            dtype=args.dtype)
    except ValueError as error:
        fail(str(error))
    problems = options.validate()
    if reward_model in PAIRRM_NAMES and importlib.util.find_spec("llm_blender") is None:
        problems.append("--use_rm with PairRM needs the llm-blender package (pip install llm-blender); or pass "
                        "--reward_model <Hub id of a sequence-classification reward model>")
    if problems:
        fail("; ".join(problems))
    return options


def main(argv: list[str] | None = None) -> dict:
    options = parse_args(argv)
    try:
        info = create_preferences_dataset(options)
    except EmptyDatasetError as error:
        fail(f"{error} (details: {Path(options.output_dir) / 'dataset_info.json'})", code=1)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    if info["num_pairs_refusal_chosen"] == 0:
        print(f"warning: no pair prefers a refusal (the model never refused); only runs with use_gold_preferences "
              f"(gold source: {info['gold_preferences']}) train towards refusals on this data set", file=sys.stderr)
    shown = {k: v for k, v in info.items() if k not in ("options", "initial_refusal_rate_per_category")}
    print(json.dumps(shown, indent=2))
    print(f"\nwritten: {options.output_dir}/train.jsonl, test.jsonl, dataset_info.json")
    return info


if __name__ == "__main__":
    main()
