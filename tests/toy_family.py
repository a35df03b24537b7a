"""A trivial experiment family for runner tests: fits a scalar with SGD, optionally on a tiny model."""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

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
    data_file: str = ""  # an input file whose text goes into the summary (input-identity tests)
    sleep_per_step: float = 0.0  # seconds to sleep after each step (concurrency tests)
    kill_self_at_step: int = -1  # the run's process kills itself with SIGKILL at this step (-1: never)
    interrupt_at_step: int = -1  # raise KeyboardInterrupt at this step, as Ctrl-C would (-1: never)
    wait_for_file: str = ""  # after step 0, wait until this file exists (lets a test order two processes)

    @classmethod
    def input_file_fields(cls) -> tuple[str, ...]:
        return ("data_file", "load_model_checkpoint")

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
        if step == config.kill_self_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == config.interrupt_at_step:
            raise KeyboardInterrupt
        time.sleep(config.sleep_per_step)
        while step == 0 and config.wait_for_file and not Path(config.wait_for_file).exists():
            time.sleep(0.05)
    previous = None
    if config.load_model_checkpoint:
        previous = (ctx.run_dir.parent / config.load_model_checkpoint).exists() or None
    data = Path(config.data_file).read_text(encoding="utf-8") if config.data_file else None
    return {"final_value": parameter.item(), "noise": noise, "first_logit": first_logit,
            "seed": ctx.seed, "upstream_found": previous, "data": data}


TOY_FAMILY = ExperimentFamily(name="toy", config_cls=ToyConfig, run=run_toy)
