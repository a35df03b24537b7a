"""Checks of the model and optimizer fields both trainers' configs have (persona and dataset-level), written once.

Each function takes a config with the fields named below and returns one-line problems (empty = fine); the
configs' `validate()` add their own family's rules.
    model fields:     model, load_model_checkpoint, is_lora_checkpoint, lora_rank, dtype
    optimizer fields: optimizer, lr, epochs
"""

from __future__ import annotations

from typing import Any

from common.names import DTYPE_NAMES
from common.optim import OPTIMIZERS


def model_field_problems(config: Any) -> list[str]:
    """A model is named; a LoRA checkpoint has a directory; lora_rank >= 1; dtype is one of DTYPE_NAMES."""
    problems = []
    if not config.model:
        problems.append("model must name a model (built-in name, Hub id or directory), got ''")
    if config.is_lora_checkpoint and not config.load_model_checkpoint:
        problems.append("is_lora_checkpoint is true but load_model_checkpoint is empty; set the adapter directory")
    if config.lora_rank < 1:
        problems.append(f"lora_rank must be >= 1, got {config.lora_rank}")
    if config.dtype not in DTYPE_NAMES:
        problems.append(f"dtype must be one of {DTYPE_NAMES}, got {config.dtype!r}")
    return problems


def optimizer_field_problems(config: Any) -> list[str]:
    """optimizer is registered (common/optim.py), lr > 0, epochs >= 1."""
    problems = []
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {config.optimizer!r}")
    if not config.lr > 0:
        problems.append(f"lr must be > 0, got {config.lr}")
    if config.epochs < 1:
        problems.append(f"epochs must be >= 1, got {config.epochs}")
    return problems
