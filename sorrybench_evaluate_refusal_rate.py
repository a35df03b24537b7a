"""Refusal rates of one or more models on the prompts of a SORRY-Bench preference data set (train and test).

    python sorrybench_evaluate_refusal_rate.py --models M1 M2 --dataset_path D --output_dir O --gpu_id 0
    python sorrybench_evaluate_refusal_rate.py --models smollm2-135m-instruct outputs/sorrybench/dpo_run/model \
        --dataset_path data_files/sorrybench/smollm2-135m-instruct --max_new_tokens 64

For each model: sample one response per prompt of train.jsonl and test.jsonl (temperature 0.7, top-p 1, 512 new
tokens: the reference's settings), judge, report refusal rate = 1 - mean judge score (unknown verdicts left out of
the mean and counted; docs/sorrybench.md), overall / per split / per category. Out: <output_dir>/<model slug>/
{generations.jsonl, judgments.jsonl (both resumable), refusal_rates.json}; <output_dir>/<slug>_refusal_eval.json
(the reference's `train_refusal_rate` / `test_refusal_rate`); <output_dir>/comparison.json; a table on stdout.
Exit status 2 (one `error:` line) on bad flags, a missing data set, or no prompts to evaluate.
A model is a built-in name, Hub id or local directory (e.g. `<run dir>/model` of a run with `save_model`);
`BASE@CHECKPOINT` loads CHECKPOINT into BASE (needed for LoRA adapters, detected by adapter_config.json).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from common.cli import fail
from common.io_utils import atomic_write_json
from sorrybench.cli import add_generation_arguments, add_judge_and_device_arguments, generation_settings, \
    resolve_judge_and_device
from sorrybench.judge_factory import build_judge
from sorrybench.refusal_rate import evaluate_refusal_rate, format_comparison_table, load_dataset_prompts


def model_slug(model: str) -> str:
    """Directory name of a model: its path/id with anything but letters, digits, '.', '_', '-' turned into '_'
    (e.g. "outputs/run/model" -> "outputs_run_model", "tiny-gpt2@ckpt" -> "tiny-gpt2_ckpt")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", nargs="+", required=True, help="models to compare (name, Hub id, dir, or BASE@CHECKPOINT)")
    add("--dataset_path", required=True, help="directory with train.jsonl and test.jsonl")
    add("--output_dir", default=None, help="default: <dataset_path>/refusal_eval")
    add("--splits", nargs="+", default=["train", "test"], help="splits to evaluate. Default train test")
    add_generation_arguments(parser, num_responses=1, temperature=0.7, max_new_tokens=512, random_seed=-1)
    add_judge_and_device_arguments(parser)
    add("--per_category", action="store_true", help="also print the per-category table")
    args = parser.parse_args(argv)
    resolve_judge_and_device(args)
    try:
        args.generation = generation_settings(args)
    except ValueError as error:
        fail(str(error))
    return args


def reference_metrics(rates: dict) -> dict:
    """The reference's `<model>_refusal_eval.json` content: {"<split>_refusal_rate": rate} per evaluated split."""
    return {f"{split}_refusal_rate": entry["refusal_rate"] for split, entry in rates["per_split"].items()}


def load_model(spec: str, *, dtype: str, device: str):
    """(model, tokenizer) for "MODEL" or "BASE@CHECKPOINT" (a LoRA adapter if CHECKPOINT has adapter_config.json)."""
    from common.models import load_model_and_tokenizer

    base, _, checkpoint = spec.partition("@")
    is_lora = bool(checkpoint) and (Path(checkpoint) / "adapter_config.json").is_file()
    return load_model_and_tokenizer(base, checkpoint=checkpoint or None, is_lora_checkpoint=is_lora, dtype=dtype,
                                    device=device)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir or Path(args.dataset_path) / "refusal_eval")
    try:
        prompts = load_dataset_prompts(args.dataset_path, args.splits)
    except (FileNotFoundError, KeyError, ValueError) as error:
        fail(f"--dataset_path {args.dataset_path}: {error}")
    if not prompts:
        fail(f"--dataset_path {args.dataset_path}: 0 prompts to evaluate in {', '.join(args.splits)}; the data set "
             "is empty, recreate it with sorrybench_create_preferences_dataset.py")
    settings = args.generation
    slugs = [model_slug(spec) for spec in args.models]
    if len(set(slugs)) != len(slugs):
        fail(f"--models: two models map to the same output directory: {slugs}")
    judge = build_judge(args.judge, judge_model=args.judge_model, device=args.device, dtype=args.dtype,
                        batch_size=args.judge_batch_size, refusal_label=args.judge_refusal_label)
    rates_by_model = {}
    for spec, slug in zip(args.models, slugs):
        model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
        rates_by_model[spec] = evaluate_refusal_rate(model, tokenizer, prompts, judge, output_dir / slug, settings,
                                                     model_name=spec, judge_batch_size=args.judge_batch_size)
        atomic_write_json(output_dir / f"{slug}_refusal_eval.json", reference_metrics(rates_by_model[spec]))
        del model, tokenizer
    atomic_write_json(output_dir / "comparison.json", rates_by_model)
    print(format_comparison_table(rates_by_model, per_category=args.per_category))
    print(f"\nwritten: {output_dir}/<model>/refusal_rates.json, {output_dir}/comparison.json")
    return rates_by_model


if __name__ == "__main__":
    main()
