"""Command-line helpers shared by the scripts that mirror the reference implementation's commands.

The reference scripts use absl-style flags: `--flag value`, and booleans as `--flag` / `--noflag`.

    parser = argparse.ArgumentParser()
    add_bool_flag(parser, "use_rm", default=False, help="re-label ties with a reward model")
    add_gpu_id_flag(parser)
    args = parser.parse_args()
    device = device_from_gpu_id(args.gpu_id)      # warns and returns "cpu" when CUDA is absent
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

log = logging.getLogger(__name__)


def add_bool_flag(parser: argparse.ArgumentParser, name: str, *, default: bool, help: str) -> None:
    """Add `--name` (sets True) and `--noname` (sets False), as absl does; the default is `default`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", dest=name, action="store_true", help=f"{help} (default {default})")
    group.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)
    parser.set_defaults(**{name: default})


def add_gpu_id_flag(parser: argparse.ArgumentParser) -> None:
    """Add `--gpu_id N` (reference flag): the CUDA device to use; -1 or no CUDA -> CPU."""
    parser.add_argument("--gpu_id", type=int, default=-1,
                        help="CUDA device index (-1: CPU); without CUDA a warning is printed and the CPU is used")


def device_from_gpu_id(gpu_id: int) -> str:
    """'cuda:N' for `gpu_id` N >= 0 when CUDA is available; else 'cpu' (with a warning when a GPU was asked for)."""
    import torch

    if gpu_id < 0:
        return "cpu"
    if not torch.cuda.is_available():
        log.warning("--gpu_id %d given but CUDA is not available: using the CPU", gpu_id)
        print(f"warning: --gpu_id {gpu_id} given but CUDA is not available: using the CPU", file=sys.stderr)
        return "cpu"
    if gpu_id >= torch.cuda.device_count():
        fail(f"--gpu_id {gpu_id}: only {torch.cuda.device_count()} CUDA device(s) visible; pass 0..{torch.cuda.device_count() - 1}")
    return f"cuda:{gpu_id}"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one `error: ...` line on stderr and exit with `code` (2: bad input, nothing written)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
