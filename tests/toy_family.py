"""A trivial experiment family for runner tests: fits a scalar with SGD, optionally on a tiny model."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from common.config import ExperimentFamily, RunConfig, RunContext


@dataclass(kw_only=True)
class ToyConfig(RunConfig):
    target: float = 1.0  # value the scalar is fitted to
    steps: int = 3
    lr: float = 0.1
    model: str = ""  # optional built-in model name; its first-token logit is logged
    load_model_checkpoint: str = ""  # a previous run's directory (chaining tests)
    fail: bool = False  # raise inside the run
    make_nan: bool = False  # log a NaN loss
    tags: list[str] | None = None

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        return problems


def run_toy(config: ToyConfig, ctx: RunContext) -> dict:
    if config.fail:
        raise RuntimeError("toy failure requested")
    parameter = torch.randn(()).requires_grad_()
    noise = random.random()
    first_logit = None
    if config.model:
        from common.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(config.model, device=ctx.device)
        with torch.no_grad():
            first_logit = model(torch.tensor([[1, 2, 3]])).logits[0, -1, 0].item()
    for step in range(config.steps):
        loss = (parameter - config.target) ** 2
        loss.backward()
        with torch.no_grad():
            parameter -= config.lr * parameter.grad
            parameter.grad = None
        ctx.logger.log(step, loss=float("nan") if config.make_nan else loss.item(), value=parameter.item())
    previous = None
    if config.load_model_checkpoint:
        previous = (ctx.run_dir.parent / config.load_model_checkpoint).exists() or None
    return {"final_value": parameter.item(), "noise": noise, "first_logit": first_logit,
            "seed": ctx.seed, "upstream_found": previous}


TOY_FAMILY = ExperimentFamily(name="toy", config_cls=ToyConfig, run=run_toy)
