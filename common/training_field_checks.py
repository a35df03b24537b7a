"""Checks of the model and optimizer fields both trainers' configs have (persona and dataset-level), written once.

Each check takes a config with the fields named below and returns one-line problems (empty = fine); the
configs' `validate()` add their own family's rules. `normalize_off_values` gives each shared field one spelling of
"off" (None), reading the older spellings as it.
    model fields:     model, load_model_checkpoint, is_lora_checkpoint, lora_rank, dtype
    optimizer fields: optimizer, lr, epochs
"""

from __future__ import annotations

from typing import Any

from common.names import DTYPE_NAMES
from common.optim import OPTIMIZERS


# Older spellings of "off" read as None: load_model_checkpoint "" (earlier persona plans), num_train_samples -1
# (the reference's "all rows").
OLD_OFF_SPELLINGS: dict[str, tuple[Any, ...]] = {"load_model_checkpoint": ("",), "num_train_samples": (-1,)}


def normalize_off_values(config: Any) -> None:
    """Set each field of OLD_OFF_SPELLINGS that `config` has and holds an old spelling to None, in place (no error:
    old plans keep working). Example: num_train_samples -1 -> None (all rows), load_model_checkpoint "" -> None."""
    for name, spellings in OLD_OFF_SPELLINGS.items():
        value = getattr(config, name, None)
        if value is not None and not isinstance(value, bool) and any(
                type(value) is type(old) and value == old for old in spellings):
            setattr(config, name, None)


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
