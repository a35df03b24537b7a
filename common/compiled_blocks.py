"""`torch_compile`: the decoder's elementwise blocks (RMSNorm, SwiGLU, rotary embedding) as compiled kernels.

    with compiled_elementwise_blocks(model):   # every forward and backward inside uses the fused kernels
        train(model)

Why: after the matrix products, the largest part of a CPU training step is these blocks' chains of small
elementwise ops (`x.pow(2).mean()`, `rsqrt`, two `mul`s; `silu(a) * b`; `q cos + rotate_half(q) sin`), each a
full pass over memory with a fresh buffer, forward and backward. `torch.compile` fuses each chain into one loop.
Measured on the 8 pairs of `bench/bench_dpo_step.py` (SmolLM2-135M, fp32, 1 thread, forward + backward, one
process, 4 interleaved passes each): 24.21 -> 21.92 CPU s (0.91x; the passes paired 0.87-0.92x), gradients
equal to 2.5e-6 of the largest entry; the first pass pays about 15 s of compilation (cached on disk by torch
for later runs). Compiling whole decoder layers instead took about 40 s to compile and gave 26.3 against 29.8 s
eager, in separate (not interleaved) runs of a drifting machine; the blocks alone were kept as the smaller change.

What is compiled (small pure functions, `dynamic=True`: one graph serves every sequence length):

    rms_norm(x, w, eps) = w * (x * rsqrt(mean(x^2, last dim) + eps))   (in float32, cast back to x's dtype)
    swiglu(a, b)        = silu(a) * b             the MLP: down_proj(swiglu(gate_proj(x), up_proj(x)))
    rotary(q, k, c, s)  = (q c + rot(q) s, k c + rot(k) s),   rot([x1, x2]) = [-x2, x1]

Which modules: norms and MLPs by structure (an `*RMSNorm` with `weight` and `variance_epsilon`, the Llama form;
an MLP with `gate_proj`/`up_proj`/`down_proj` and a SiLU `act_fn`); the rotary function only for the model types
in `ROTARY_MODEL_TYPES`, whose modeling file defines exactly that `apply_rotary_pos_emb`. Anything else keeps its
own forward. If compilation fails (no C++ compiler for inductor, an unsupported platform), the block warns once
and runs the eager functions, which compute the same numbers.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from common.attribute_swap import swapped_attributes

log = logging.getLogger(__name__)

# model types whose modeling module's `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)` is the rotation above
ROTARY_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def rms_norm(hidden: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm: w * (x / sqrt(mean(x^2) + eps)), computed in float32 and cast back before the weight."""
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(dtype)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, the gated activation of a Llama MLP."""
    return F.silu(gate) * up


def rotary(query: Tensor, key: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1) -> tuple[Tensor, Tensor]:
    """Rotary embedding of (B, H, T, D) queries and keys with (B, T, D) cos/sin (Llama's `apply_rotary_pos_emb`)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate_half(x: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin


class _CompiledOrEager:
    """Calls the compiled function; after its first failure (warned once) the eager one, for good."""

    def __init__(self, eager: Callable):
        self.eager, self.compiled, self.failed = eager, torch.compile(eager, dynamic=True), False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # inductor needs a working C++ (or triton) toolchain
                self.failed = True
                log.warning("torch_compile: compiling %s failed (%s: %s); running it uncompiled (same numbers, "
                            "no speed-up)", self.eager.__name__, type(error).__name__, str(error).splitlines()[0])
        return self.eager(*args, **kwargs)


_KERNELS: dict[Callable, _CompiledOrEager] = {}


def _kernel(eager: Callable) -> _CompiledOrEager:
    """One compiled wrapper per function per process (so graphs and the failure flag are shared)."""
    if eager not in _KERNELS:
        _KERNELS[eager] = _CompiledOrEager(eager)
    return _KERNELS[eager]


def _is_llama_rms_norm(module: torch.nn.Module) -> bool:
    return (type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), Tensor)
            and isinstance(getattr(module, "variance_epsilon", None), float))


def _is_swiglu_mlp(module: torch.nn.Module) -> bool:
    parts = all(isinstance(getattr(module, name, None), torch.nn.Linear) for name in ("gate_proj", "up_proj", "down_proj"))
    return parts and type(getattr(module, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation")


def _compiled_forward(module: torch.nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The compiled forward of a Llama-form RMSNorm or SwiGLU MLP; None for any other module."""
    if _is_llama_rms_norm(module):
        norm = _kernel(rms_norm)
        return lambda hidden: norm(hidden, module.weight, module.variance_epsilon)
    if _is_swiglu_mlp(module):
        gate = _kernel(swiglu)
        return lambda hidden: module.down_proj(gate(module.gate_proj(hidden), module.up_proj(hidden)))
    return None


def _rotary_module(model: torch.nn.Module):
    """The modeling module whose `apply_rotary_pos_emb` the attention layers call (the module defining the first
    attention class of the model), when that model type is in ROTARY_MODEL_TYPES; else None."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "q_proj") and getattr(config, "model_type", None) in ROTARY_MODEL_TYPES:
            modeling = sys.modules.get(type(module).__module__)
            return modeling if callable(getattr(modeling, "apply_rotary_pos_emb", None)) else None
    return None


@contextmanager
def compiled_elementwise_blocks(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside the block the (unwrapped) model's RMSNorms, SwiGLU MLPs and rotary embedding run compiled (see the
    module docstring); yields how many modules (plus the rotary function) were switched. Everything is restored
    on exit (`common.attribute_swap`). `enabled=False` changes nothing."""
    if not enabled:
        yield 0
        return
    replacements = [(module, "forward", forward) for module in model.modules()
                    if (forward := _compiled_forward(module)) is not None]
    rotary_module = _rotary_module(model)
    if rotary_module is not None:
        replacements.append((rotary_module, "apply_rotary_pos_emb", _kernel(rotary)))
    with swapped_attributes(replacements) as switched:
        yield switched
