"""Command-line flags shared by the SORRY-Bench scripts (sampling, judge, device) and their conversion."""

from __future__ import annotations

import argparse

from sorrybench.generation import GenerationSettings
from sorrybench.judges import JUDGE_NAMES


def add_generation_arguments(parser: argparse.ArgumentParser, *, num_responses: int, temperature: float) -> None:
    """--num_responses, --temperature, --top_p, --max_new_tokens, --batch_size, --seed (see GenerationSettings)."""
    add = parser.add_argument
    add("--num_responses", type=int, default=num_responses, help=f"responses per prompt. Default {num_responses}")
    add("--temperature", type=float, default=temperature,
        help=f"sampling temperature, 0 = greedy. Default {temperature}")
    add("--top_p", type=float, default=1.0, help="nucleus sampling mass. Default 1.0 (off)")
    add("--max_new_tokens", type=int, default=256, help="max tokens per response. Default 256")
    add("--batch_size", type=int, default=8, help="prompts per generate call. Default 8")
    add("--seed", type=int, default=0, help="sampling seed. Default 0")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """GenerationSettings from the flags of `add_generation_arguments`."""
    return GenerationSettings(num_responses=args.num_responses, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)


def add_judge_and_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--judge, --judge_model, --judge_refusal_label, --judge_batch_size, --device, --dtype."""
    add = parser.add_argument
    add("--judge", default="keyword", choices=JUDGE_NAMES, help="refusal judge. Default keyword")
    add("--judge_model", default=None,
        help="hf_classifier / hf_judge model (hf_judge default: the official SORRY-Bench judge)")
    add("--judge_refusal_label", default=None, help="hf_classifier: label name or index meaning refusal")
    add("--judge_batch_size", type=int, default=8, help="responses per judge (and reward-model) forward. Default 8")
    add("--device", default="auto", help="auto (cuda if available), cpu or cuda:N. Default auto")
    add("--dtype", default="float32", help="float32, bfloat16 or float16 (models and hf judges). Default float32")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" if available else "cpu"; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
