"""Input-embedding lookup whose backward adds its rows straight into the embedding weight's `.grad`.

A plain `nn.Embedding` backward builds a dense (V, d) gradient (zero-filled, then the T used rows added), and for a
tied embedding/LM-head weight autograd then adds it to the LM head's dense (V, d) gradient before accumulating
into `.grad`. With SmolLM2 (V = 49152, d = 576) that is a 113 MB fill plus a 113 MB add per forward: 34 ms + 47 ms
per pair, about 0.65 s of a 20 s 8-pair step on the benchmark machine (profile in bench/RESULTS.md section 1).
`embed_into_grad` returns the same embeddings, but its backward does

    weight.grad[ids[t]] += dL/d(embedding_t)    for every position t (ids equal to `padding_idx` skipped)

with one `index_add_` of T rows, so the only dense (V, d) work left is the LM head's own gradient.

Only valid where gradients are accumulated by plain autograd into `.grad`: not under DDP/FSDP (their reducers only
see gradients that pass through autograd) — `can_embed_into_grad` checks this and the embedding's options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _EmbeddingIntoGrad(torch.autograd.Function):
    """Forward: `weight[ids]`; backward: index_add_ into `weight.grad`, no gradient returned through autograd."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, padding_idx: int | None) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows, grads = ids.reshape(-1), grad_output.reshape(-1, weight.shape[1])
        if ctx.padding_idx is not None:
            keep = rows != ctx.padding_idx
            rows, grads = rows[keep], grads[keep]
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, rows, grads.to(weight.grad.dtype))
        return None, None, None


def can_embed_into_grad(model: torch.nn.Module) -> bool:
    """Whether `embed_into_grad` may replace the model's (unwrapped) input embedding: a plain trainable
    `nn.Embedding` without max_norm / scale_grad_by_freq / sparse, grad mode on, and no torch.distributed
    process group (whose gradient reducers would miss the rows added here)."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or not embedding.weight.requires_grad:
        return False
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return False
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.is_grad_enabled() and not distributed


def embed_into_grad(model: torch.nn.Module, input_ids: Tensor) -> Tensor:
    """(B, T, d) input embeddings of `input_ids` (as `model.get_input_embeddings()(input_ids)`), whose gradient
    goes straight into the embedding weight's `.grad` (see the module docstring); needs `can_embed_into_grad`."""
    embedding = model.get_input_embeddings()
    return _EmbeddingIntoGrad.apply(embedding.weight, input_ids, embedding.padding_idx)
