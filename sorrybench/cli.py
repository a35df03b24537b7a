"""Command-line flags shared by the SORRY-Bench scripts (sampling, judge, device) and their conversion.

The scripts accept the reference implementation's flags (`--max_output_length`, `--random_seed`, `--judge_model`,
`--cache_dir`, `--batch_size`, `--gpu_id`) next to ours (`--max_new_tokens`, `--judge`, `--device`, ...).
"""

from __future__ import annotations

import argparse
import os

from common.cli import add_gpu_id_flag, device_from_gpu_id
from common.distributed import resolve_device
from sorrybench.generation import GenerationSettings
from sorrybench.judges import JUDGE_NAMES


def add_generation_arguments(parser: argparse.ArgumentParser, *, num_responses: int, temperature: float,
                             max_new_tokens: int, random_seed: int) -> None:
    """--num_responses, --temperature, --top_p, --max_new_tokens (= --max_output_length), --batch_size,
    --random_seed (= --seed); see GenerationSettings."""
    add = parser.add_argument
    add("--num_responses", type=int, default=num_responses, help=f"responses per prompt. Default {num_responses}")
    add("--temperature", type=float, default=temperature,
        help=f"sampling temperature, 0 = greedy. Default {temperature}")
    add("--top_p", type=float, default=1.0, help="nucleus sampling mass. Default 1.0 (off)")
    add("--max_new_tokens", "--max_output_length", dest="max_new_tokens", type=int, default=max_new_tokens,
        help=f"max tokens per response (reference: --max_output_length). Default {max_new_tokens}")
    add("--batch_size", type=int, default=8, help="prompts per generate call (and judge batch by default). Default 8")
    add("--random_seed", "--seed", dest="random_seed", type=int, default=random_seed,
        help=f"random seed (reference flag; <= 0: sampling uses seed 0). Default {random_seed}")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """GenerationSettings from the flags of `add_generation_arguments` (raises ValueError on bad values)."""
    return GenerationSettings(num_responses=args.num_responses, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              seed=max(args.random_seed, 0))


def add_judge_and_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--judge, --judge_model, --judge_refusal_label, --judge_batch_size, --device, --gpu_id, --dtype, --cache_dir."""
    add = parser.add_argument
    add("--judge", default=None, choices=JUDGE_NAMES,
        help="refusal judge. Default keyword, or hf_judge when --judge_model is given")
    add("--judge_model", default=None,
        help="hf_classifier / hf_judge model (hf_judge default: the official SORRY-Bench judge, the reference's)")
    add("--judge_refusal_label", default=None, help="hf_classifier: label name or index meaning refusal")
    add("--judge_batch_size", type=int, default=None, help="responses per judge forward. Default --batch_size")
    add("--device", default="auto", help="auto (cuda if available), cpu or cuda:N. Default auto")
    add_gpu_id_flag(parser)
    parser.set_defaults(gpu_id=None)
    add("--dtype", default="float32", help="float32, bfloat16 or float16 (models and hf judges). Default float32")
    add("--cache_dir", default=None, help="Hugging Face cache directory for models and data sets (sets HF_HUB_CACHE)")


def resolve_judge_and_device(args: argparse.Namespace) -> None:
    """Fill in `args.judge`, `args.judge_batch_size` and `args.device` (--gpu_id wins over --device); apply
    --cache_dir to the Hugging Face cache."""
    if args.judge is None:
        args.judge = "hf_judge" if args.judge_model else "keyword"
    if args.judge_batch_size is None:
        args.judge_batch_size = args.batch_size
    args.device = device_from_gpu_id(args.gpu_id) if args.gpu_id is not None else str(resolve_device(args.device))
    if args.cache_dir:
        os.environ["HF_HUB_CACHE"] = os.path.abspath(os.path.expanduser(args.cache_dir))
