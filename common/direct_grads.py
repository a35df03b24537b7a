"""Input embedding and linear layers whose backward writes the weight gradient straight into `.grad`.

Why: in a pair-at-a-time step every backward of a plain `nn.Embedding` / `nn.Linear` allocates fresh dense weight
gradients that autograd then adds up and accumulates into `.grad`. With SmolLM2 (V = 49152, d = 576, one 113 MB
matrix, tied) that is per pair a zero-fill and an add of the embedding gradient (34 ms + 47 ms in the lead's
profile), the LM head's dW product into a new buffer (123 ms at 250 response tokens, vs 69 ms for the same product
accumulated into an existing buffer with `addmm_`: the new buffer's pages are faulted in every time) and the
accumulation add; the 210 projections of the decoder layers do the same at (1536, 576) and smaller. The functions
here do instead, for input ids i_t, layer inputs h_r, output gradients g_r:

    embedding:  weight.grad[i_t] += dL/de_t            (one index_add_ of T rows; ids == padding_idx skipped)
    linear:     weight.grad      += sum_r g_r^T h_r     (one addmm_; or weight.grad = g^T h when it is None)
                bias.grad        += sum_r g_r

Same numbers up to fp32 summation order. Measured on the 8-pair benchmark of `bench/bench_dpo_step.py`
(SmolLM2-135M, fp32, 1 thread, forward + backward of one step, interleaved, medians): embedding 18.97 -> 18.62 CPU
s (together with `common.pair_attention`: 18.13 s); LM head on top: 18.21 -> 17.81 s; every linear layer instead of
the LM head only: 26.17 -> 25.67 s (a slower day of the shared machine, 4 interleaved passes each, 0.98x).

Only valid where gradients reach `.grad` through plain autograd: not under DDP/FSDP, whose reducers only see
gradients passing through autograd hooks, and not under autocast (the layers then keep their own forward);
`can_write_grads` checks the first two, the helpers the module types and options.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from common.attribute_swap import swapped_attributes
from common.training_settings import is_checkpointing


def _add_into_grad(weight: Tensor, compute: callable, accumulate: callable) -> None:
    """weight.grad = compute() when it is None, else accumulate(weight.grad) in place."""
    if weight.grad is None:
        weight.grad = compute()
    else:
        accumulate(weight.grad)


class _EmbeddingIntoGrad(torch.autograd.Function):
    """Forward: `weight[ids]`; backward: index_add_ into `weight.grad`, nothing returned through autograd."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows, grads = ids.reshape(-1), grad_output.reshape(-1, weight.shape[1]).to(weight.dtype)
        if ctx.padding_idx is not None:
            keep = rows != ctx.padding_idx
            rows, grads = rows[keep], grads[keep]
        _add_into_grad(weight, lambda: torch.zeros_like(weight).index_add_(0, rows, grads),
                       lambda grad: grad.index_add_(0, rows, grads))
        return None, None, None


class _LinearIntoGrad(torch.autograd.Function):
    """Forward: h @ weight^T (+ bias); backward: dL/dh = g @ weight, and g^T h (sum of g) added into `weight.grad`
    (`bias.grad`)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(hidden)
        ctx.weight, ctx.bias = weight, bias
        return F.linear(hidden, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (hidden,) = ctx.saved_tensors
        weight, bias = ctx.weight, ctx.bias
        grads, inputs = grad_output.reshape(-1, grad_output.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        _add_into_grad(weight, lambda: grads.t() @ inputs, lambda grad: grad.addmm_(grads.t(), inputs))
        if bias is not None:
            _add_into_grad(bias, lambda: grads.sum(0), lambda grad: grad.add_(grads.sum(0)))
        return grad_output @ weight, None, None


def can_write_grads() -> bool:
    """Grad mode is on and no torch.distributed process group exists (its reducers would miss these grads)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.is_grad_enabled() and not distributed


def can_embed_into_grad(model: torch.nn.Module) -> bool:
    """Whether `embed_into_grad` may replace the (unwrapped) model's input embedding: `can_write_grads` and a plain
    trainable `nn.Embedding` without max_norm / scale_grad_by_freq / sparse."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or not embedding.weight.requires_grad:
        return False
    plain = embedding.max_norm is None and not embedding.scale_grad_by_freq and not embedding.sparse
    return plain and can_write_grads()


def embed_into_grad(model: torch.nn.Module, input_ids: Tensor) -> Tensor:
    """(B, T, d) input embeddings of `input_ids` (as `model.get_input_embeddings()(input_ids)`), whose gradient
    goes straight into the embedding weight's `.grad`; needs `can_embed_into_grad`."""
    embedding = model.get_input_embeddings()
    return _EmbeddingIntoGrad.apply(embedding.weight, input_ids, embedding.padding_idx)


def _writes_into_grad(module: torch.nn.Module) -> bool:
    """A plain `nn.Linear` (not a subclass such as a LoRA or quantized layer) with a trainable weight and a bias
    that is absent or trainable."""
    if type(module) is not torch.nn.Linear or not module.weight.requires_grad:
        return False
    return module.bias is None or module.bias.requires_grad


def _direct_forward(linear: torch.nn.Linear):
    """`linear`'s forward through `_LinearIntoGrad`, or its current forward under autocast."""
    plain_forward = linear.forward

    def forward(hidden: Tensor) -> Tensor:
        if torch.is_autocast_enabled(hidden.device.type):
            return plain_forward(hidden)
        return _LinearIntoGrad.apply(hidden, linear.weight, linear.bias)

    return forward


@contextmanager
def linears_into_grad(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every plain trainable `nn.Linear` of the (unwrapped) model, the LM head included, computes
    its output with `_LinearIntoGrad`, when `can_write_grads`; otherwise (and under autocast) nothing changes. With
    gradient checkpointing on, only the LM head does (the checkpointed layers recompute their forward later).

    Each instance gets its own `forward` attribute for the block (`common.attribute_swap`), removed on exit."""
    if not can_write_grads():
        yield
        return
    # a checkpointed layer recomputes its forward outside this block: only the LM head (never checkpointed) then
    candidates = [model.get_output_embeddings()] if is_checkpointing(model) else model.modules()
    with swapped_attributes((module, "forward", _direct_forward(module)) for module in candidates
                            if _writes_into_grad(module)):
        yield
