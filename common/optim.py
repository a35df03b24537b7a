"""Optimizer construction shared by the persona and the dataset-level trainers."""

from __future__ import annotations

import math
from typing import Iterable

import torch


class ScratchRMSprop(torch.optim.RMSprop):
    """torch's RMSprop with the same arithmetic, minus one large allocation per parameter per step.

    For each parameter p with gradient g (torch defaults: no momentum, not centred, no weight decay):

        v <- alpha v + (1 - alpha) g^2;     p <- p - lr g / (sqrt(v) + eps)

    `torch.optim.RMSprop` (single-tensor path, the CPU default) forms sqrt(v) + eps in a fresh tensor the size
    of p. On CPU, allocations above glibc's mmap threshold go back to the OS when freed, so every step
    page-faults them in again: for SmolLM2-135M that was 0.25 s of a 1.4 s persona step. Here sqrt(v) + eps is
    written into one scratch buffer (the size of the largest parameter) reused by every parameter, with the
    same operations in the same order, so the updates are bitwise identical to torch's (tested). The state
    (`step`, `square_avg`) and `state_dict` are torch's. Any other setting (momentum, centred, weight decay,
    maximize, foreach, differentiable, capturable, complex or sparse tensors) runs torch's own step.
    """

    def __init__(self, params, lr: float = 1e-2, **kwargs):
        super().__init__(params, lr=lr, **kwargs)
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _fast_path(self, group: dict) -> bool:
        plain = (group["momentum"] == 0 and not group["centered"] and group["weight_decay"] == 0
                 and not group["maximize"] and not group["foreach"] and not group["differentiable"]
                 and not group["capturable"])
        return plain and all(p.grad is None or (p.is_contiguous() and not p.is_complex() and not p.grad.is_sparse)
                             for p in group["params"])

    def _scratch_like(self, param: torch.Tensor) -> torch.Tensor:
        key = (param.device, param.dtype)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < param.numel():
            buffer = torch.empty(param.numel(), dtype=param.dtype, device=param.device)
            self._scratch[key] = buffer
        return buffer[: param.numel()].view_as(param)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not all(self._fast_path(group) for group in self.param_groups):
            return super().step(closure)
        for group in self.param_groups:
            alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # as torch initialises it
                    state["step"] = torch.zeros((), dtype=torch.get_default_dtype())
                    state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                grad, square_avg = param.grad, state["square_avg"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                denominator = torch.sqrt(square_avg, out=self._scratch_like(param)).add_(eps)
                param.addcdiv_(grad, denominator, value=-lr)
        return None


OPTIMIZERS = {
    "rmsprop": ScratchRMSprop,  # the paper's choice (Razin et al., App. C), torch defaults otherwise
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,  # TRL/Trainer's default (`optim="adamw_torch"`)
    "sgd": torch.optim.SGD,
}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")  # TRL's `lr_scheduler_type` names


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, *, weight_decay: float = 0.0,
                    device: torch.device | str | None = None) -> torch.optim.Optimizer:
    """Return optimizer `name` (one of OPTIMIZERS) over the trainable `params` with learning rate `lr`.

    `weight_decay` is passed to every optimizer (0.0, TRL's default, also for AdamW, whose torch default is
    0.01). On a CUDA `device` torch's multi-tensor (`foreach=True`) implementations are used (RMSprop included);
    elsewhere RMSprop is `ScratchRMSprop` (bitwise torch's single-tensor update, measured faster on CPU), and Adam /
    AdamW on CPU tensors torch's fused kernel (`fused=True`)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown name {name!r}; expected one of {sorted(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("optimizer: the model has no trainable parameters")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        optimizer_cls = torch.optim.RMSprop if name == "rmsprop" else OPTIMIZERS[name]
        return optimizer_cls(trainable, lr=lr, weight_decay=weight_decay, foreach=True)
    on_cpu = all(p.device.type == "cpu" for p in trainable)
    if name in ("adam", "adamw") and on_cpu:  # one fused pass per tensor, no temporaries (0.49 -> 0.15 s per step
        # on SmolLM2-135M, 1 thread; same update up to fp32 round-off, 6e-8 after 3 steps at lr 1e-3)
        return OPTIMIZERS[name](trainable, lr=lr, weight_decay=weight_decay, fused=True)
    return OPTIMIZERS[name](trainable, lr=lr, weight_decay=weight_decay)


def warmup_step_count(num_training_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warm-up length as transformers' TrainingArguments computes it: `warmup_steps` when > 0, else
    ceil(`warmup_ratio` * `num_training_steps`)."""
    return warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * num_training_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, scheduler_type: str, num_training_steps: int,
                       warmup_steps: int = 0, warmup_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler | None:
    """transformers' `get_scheduler(scheduler_type, ...)` (the schedules TRL uses), or None for a constant rate
    without warm-up (the optimizer's lr is then never touched). With W warm-up steps and T training steps the
    factor on lr at step t (0-based, the lr of the (t+1)-th update) is t / W for t < W, then: constant 1;
    linear max(0, (T - t) / (T - W)); cosine 0.5 (1 + cos(pi (t - W) / (T - W)))."""
    if scheduler_type not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler_type: expected one of {LR_SCHEDULERS}, got {scheduler_type!r}")
    warmup = warmup_step_count(num_training_steps, warmup_steps, warmup_ratio)
    if scheduler_type == "constant":
        if warmup:
            raise ValueError("lr_scheduler_type 'constant' has no warm-up (as in transformers); use "
                             "'constant_with_warmup' or set warmup_steps and warmup_ratio to 0")
        return None
    from transformers import get_scheduler  # deferred: transformers is heavy and the persona path needs none

    return get_scheduler(scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps)


LOW_PRECISION_DTYPES = ("bfloat16", "float16")


def low_precision_training_problem(dtype: str, optimizer: str, lr: float) -> str | None:
    """Why training `dtype` weights directly with a plain optimizer is refused, or None when it is fine.

    A plain optimizer adds its update to the weights in their own dtype. bfloat16 keeps 8 significant bits, so an
    update below half the spacing of a weight's neighbours is rounded away: RMSprop's first step moves every weight
    by lr / sqrt(1 - alpha) = 10 lr (5e-5 at lr 5e-6), while a weight of 0.02 sits where bfloat16 values are
    2^-13 = 1.2e-4 apart, so it stays 0.02 (measured on 10^6 N(0, 0.02) weights with N(0, 1) gradients: 43.4%
    unchanged after step 1; float32: 0%). The reference trains in float32.
    """
    if dtype not in LOW_PRECISION_DTYPES:
        return None
    return (f"dtype {dtype} with optimizer {optimizer} updates {dtype} weights directly: at lr {lr:g} most updates "
            f"round to zero (e.g. 43% of N(0, 0.02) weights do not change at step 1 in bfloat16); use dtype float32 "
            "as the reference does, or set allow_low_precision_training true to train this way on purpose")
