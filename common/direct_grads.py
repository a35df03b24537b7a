"""Input embedding and LM head whose backward writes the (V, d) weight gradient straight into `.grad`.

Why: in a pair-at-a-time step every backward of a plain `nn.Embedding` / `nn.Linear` LM head allocates fresh dense
(V, d) gradients that autograd then adds up and accumulates into `.grad`. With SmolLM2 (V = 49152, d = 576, one
113 MB matrix, tied) that is per pair a zero-fill and an add of the embedding gradient (34 ms + 47 ms in the
lead's profile), the LM head's dW product into a new buffer (123 ms at 250 response tokens, vs 69 ms for the same
product accumulated into an existing buffer with `addmm_`: the new buffer's pages are faulted in every time) and
the accumulation add. The functions here do instead, for input ids i_t, hidden states h_r, logit gradients g_r:

    embedding:  weight.grad[i_t] += dL/de_t            (one index_add_ of T rows; ids == padding_idx skipped)
    LM head:    weight.grad      += sum_r g_r^T h_r     (one addmm_; or weight.grad = g^T h when it is None)

Same numbers up to fp32 summation order. Measured on the 8-pair benchmark of `bench/bench_dpo_step.py`
(SmolLM2-135M, fp32, 1 thread, forward + backward of one step, interleaved, medians): embedding 18.97 -> 18.62 CPU
s (together with `common.pair_attention`: 18.13 s); LM head on top: 18.21 -> 17.81 s.

Only valid where gradients reach `.grad` through plain autograd: not under DDP/FSDP, whose reducers only see
gradients passing through autograd hooks, and not under autocast (the LM head then keeps its own forward);
`can_write_grads` checks the first two, the helpers the module types and options.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


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
    """Forward: h @ weight^T (no bias); backward: dL/dh = g @ weight, and g^T h added into `weight.grad`."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(hidden)
        ctx.weight = weight
        return hidden @ weight.t()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (hidden,) = ctx.saved_tensors
        weight = ctx.weight
        grads, inputs = grad_output.reshape(-1, grad_output.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        _add_into_grad(weight, lambda: grads.t() @ inputs, lambda grad: grad.addmm_(grads.t(), inputs))
        return grad_output @ weight, None


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


@contextmanager
def head_into_grad(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block the (unwrapped) model's LM head computes h @ W^T with `_LinearIntoGrad`, when it is a plain
    trainable `nn.Linear` without bias and `can_write_grads`; otherwise (and under autocast) nothing changes."""
    head = model.get_output_embeddings()
    usable = type(head) is torch.nn.Linear and head.bias is None and head.weight.requires_grad
    if not (usable and can_write_grads()):
        yield
        return
    plain_forward, own_forward = head.forward, head.__dict__.get("forward")

    def forward(hidden: Tensor) -> Tensor:
        if torch.is_autocast_enabled(hidden.device.type):
            return plain_forward(hidden)
        return _LinearIntoGrad.apply(hidden, head.weight)

    head.forward = forward
    try:
        yield
    finally:
        if own_forward is None:
            del head.forward  # back to the class's forward
        else:
            head.forward = own_forward
