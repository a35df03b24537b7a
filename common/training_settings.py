"""Training settings of the dataset-level trainer that TRL/`transformers.Trainer` users expect (TRL's names).

    precision = MixedPrecision.from_flags(config.bf16, config.fp16, device)   # autocast + fp16 loss scaling
    precision.wrap_forward(model)                  # every forward (reference, evaluation, training) autocasts
    enable_gradient_checkpointing(model)           # recompute activations in backward; dropout stays off
    grad_norm = clip_gradients(model, optimizer, max_grad_norm, precision, group)

Rules:
  * bf16 / fp16 (`TrainingArguments.bf16` / `fp16`): the forward runs under `torch.autocast("cuda", dtype)`
    while the weights stay float32 (fp32 master weights, the optimizer updates float32). fp16 also scales the loss
    (`torch.amp.GradScaler`: the scaled loss is backpropagated, gradients are unscaled before clipping, and a step
    with inf/NaN gradients is skipped). CUDA only; the parameters must be float32 (`dtype` "float32").
  * gradient_checkpointing: transformers checkpoints its decoder layers only in training mode, so the model is put
    in training mode with every dropout probability set to 0 (TRL's `disable_dropout`), which keeps the
    log-probs the same deterministic function as in evaluation mode. Non-reentrant checkpointing (also with LoRA).
  * max_grad_norm: the global L2 norm of all gradients is clipped to at most this value
    (`clip_grad_norm_`: g <- g * min(1, max_norm / (||g||_2 + 1e-6))); the norm before clipping is returned.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class MixedPrecision:
    """Autocast dtype (None: off) and, for fp16, the gradient scaler."""

    autocast_dtype: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler with fp16

    @classmethod
    def from_flags(cls, bf16: bool, fp16: bool, device: torch.device) -> "MixedPrecision":
        """Raises ValueError for both flags at once or autocast on a device that is not CUDA."""
        if bf16 and fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        if not (bf16 or fp16):
            return cls()
        if device.type != "cuda":
            raise ValueError(f"{'bf16' if bf16 else 'fp16'} autocast is for CUDA devices, but this run is on "
                             f"{device}; set it to false (or run on a GPU)")
        if bf16:
            return cls(torch.bfloat16)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))

    @property
    def tag(self) -> str:
        """'' when off, else 'autocast_bfloat16' / 'autocast_float16' (part of the reference-cache key)."""
        return "" if self.autocast_dtype is None else f"autocast_{str(self.autocast_dtype).removeprefix('torch.')}"

    def wrap_forward(self, model: torch.nn.Module) -> None:
        """Make `model.forward` run under autocast (as accelerate does for mixed precision); no-op when off."""
        if self.autocast_dtype is None:
            return
        forward = model.forward
        dtype = self.autocast_dtype

        @functools.wraps(forward)
        def autocast_forward(*args, **kwargs):
            with torch.autocast("cuda", dtype=dtype):
                return forward(*args, **kwargs)

        model.forward = autocast_forward

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate (scaled with fp16)."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), through the scaler with fp16 (skipped when gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def disable_dropout(model: torch.nn.Module) -> None:
    """Set p = 0 in every `torch.nn.Dropout` and every float `attention_dropout` attribute (TRL's disable_dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing of the decoder layers; the model is left in training mode with all
    dropout off (see the module docstring). Raises ValueError for a model without checkpointing support."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it; set it to false")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    disable_dropout(model)
    model.train()


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model recomputes its layers' forward in the backward pass (transformers 5 renamed
    `is_gradient_checkpointing` to `is_activation_checkpointing`)."""
    name = ("is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    return bool(getattr(model, name, False))


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Undo `enable_gradient_checkpointing`: no recomputation, evaluation mode (dropout stays at 0)."""
    model.activation_checkpointing_disable()
    model.eval()


def clip_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float,
                   precision: MixedPrecision, accelerator: Any = None) -> float:
    """Clip the global gradient L2 norm of the optimizer's parameters to `max_grad_norm`; return the norm before
    clipping. fp16 gradients are unscaled first; under accelerate its own `clip_grad_norm_` is used (FSDP)."""
    if precision.scaler is not None:
        precision.scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if accelerator is not None:
        norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    return float(norm)
