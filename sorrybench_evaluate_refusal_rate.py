"""Refusal rates of one or more models on the prompts of a SORRY-Bench preference data set (train and test).

    python sorrybench_evaluate_refusal_rate.py --models smollm2-135m-instruct outputs/sorrybench/dpo_run/model \
        --dataset_path data_files/sorrybench/smollm2-135m-instruct --max_new_tokens 64

For each model: generate for every prompt of train.jsonl and test.jsonl, judge, aggregate overall / per split /
per category (rates with counts). Out: <output_dir>/<model slug>/{generations.jsonl, judgments.jsonl (both
resumable), refusal_rates.json}; <output_dir>/comparison.json; a comparison table on stdout.
A model is a built-in name, Hub id or local directory (e.g. `<run dir>/model` of a run with `save_model`);
`BASE@CHECKPOINT` loads CHECKPOINT into BASE (needed for LoRA adapters, detected by adapter_config.json).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from common.io_utils import atomic_write_json
from sorrybench.cli import add_generation_arguments, add_judge_and_device_arguments, generation_settings, resolve_device
from sorrybench.judges import build_judge
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
    add_generation_arguments(parser, num_responses=1, temperature=0.0)
    add_judge_and_device_arguments(parser)
    add("--per_category", action="store_true", help="also print the per-category table")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    return args


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
    prompts = load_dataset_prompts(args.dataset_path, args.splits)
    settings = generation_settings(args)
    judge = build_judge(args.judge, judge_model=args.judge_model, device=args.device, dtype=args.dtype,
                        batch_size=args.judge_batch_size, refusal_label=args.judge_refusal_label)
    slugs = [model_slug(spec) for spec in args.models]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"--models: two models map to the same output directory: {slugs}")
    rates_by_model = {}
    for spec, slug in zip(args.models, slugs):
        model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
        rates_by_model[spec] = evaluate_refusal_rate(model, tokenizer, prompts, judge, output_dir / slug, settings,
                                                     model_name=spec, judge_batch_size=args.judge_batch_size)
        del model, tokenizer
    atomic_write_json(output_dir / "comparison.json", rates_by_model)
    print(format_comparison_table(rates_by_model, per_category=args.per_category))
    print(f"\nwritten: {output_dir}/<model>/refusal_rates.json, {output_dir}/comparison.json")
    return rates_by_model


if __name__ == "__main__":
    main()
