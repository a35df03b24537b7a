"""Optimizer construction shared by the persona and the dataset-level trainers."""

from __future__ import annotations

from typing import Iterable

import torch

OPTIMIZERS = {
    "rmsprop": torch.optim.RMSprop,  # the paper's choice (Razin et al., App. C), torch defaults otherwise
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Return optimizer `name` (one of OPTIMIZERS) over the trainable `params` with learning rate `lr`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown name {name!r}; expected one of {sorted(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("optimizer: the model has no trainable parameters")
    return OPTIMIZERS[name](trainable, lr=lr)
