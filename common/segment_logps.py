"""Summed target log-probs of consecutive segments of logit rows, with a backward that writes into one buffer.

For logit rows z_k (k = 0 .. R-1, vocabulary V), targets t_k and segments s = 0 .. S-1 of consecutive rows,

    forward:   L_s = sum_{k in s} log softmax(z_k)[t_k]                      (nats)
    backward:  dL/dz_kj = g_{s(k)} * (1[j == t_k] - softmax(z_k)_j)           g_s = upstream gradient of L_s

The plain path (`summed_token_logps` on slices of the logits, i.e. `F.cross_entropy`) allocates per segment a
log-softmax output, a zero-filled one-hot gradient, the log-softmax backward's output, and for each slice a
zero-filled full-size gradient that the slices' gradients are added into: about ten (R, V) buffers for a
packed pair. Here the forward allocates one (R, V) log-softmax buffer and the backward turns it in place into
the gradient (exp, scale, add g at the targets). Measured on the 8 pairs of `bench/bench_dpo_step.py`
(SmolLM2-135M, V = 49152, fp32, 1 thread, forward + backward): see bench/RESULTS.md, section 1.

The in-place backward means the graph can be differentiated once: a second backward through it (retain_graph)
raises autograd's "modified by an inplace operation" error instead of returning wrong numbers, so callers use it
only where gradients are taken by one `.backward()` (the training step, as for `common.direct_grads`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class _SegmentLogps(torch.autograd.Function):
    """(R, V) logits, (R,) targets, (R,) segment index -> (S,) summed target log-probs; see the module docstring."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, segments: Tensor, num_segments: int) -> Tensor:
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.log_softmax(logits.to(compute_dtype), dim=-1)
        picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        sums = torch.zeros(num_segments, dtype=compute_dtype, device=logits.device).index_add_(0, segments, picked)
        ctx.save_for_backward(logp, targets, segments)
        ctx.logits_dtype = logits.dtype
        return sums

    @staticmethod
    def backward(ctx, grad_sums: Tensor) -> tuple[Tensor, None, None, None]:
        logp, targets, segments = ctx.saved_tensors
        row_grads = grad_sums.to(logp.dtype)[segments].unsqueeze(1)  # (R, 1): g_{s(k)}
        grad = logp.exp_().mul_(row_grads.neg())  # -g p, in the saved buffer (its last use)
        grad.scatter_add_(1, targets.unsqueeze(1), row_grads)  # + g at the targets
        return grad.to(ctx.logits_dtype), None, None, None


def segment_summed_logps(logits: Tensor, targets: Tensor, lengths: Sequence[int]) -> Tensor:
    """(S,) sums of log softmax(logits[k])[targets[k]] over consecutive segments of `lengths` rows (nats, float32;
    float64 for float64 logits). Differentiate once only (see the module docstring).

    Args:
        logits: (R, V) logits, R = sum(lengths).
        targets: (R,) token ids.
        lengths: Rows per segment, each >= 1.
    """
    if logits.shape[0] != sum(lengths) or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match segment "
                         f"lengths {list(lengths)} (summing to {sum(lengths)})")
    segments = torch.repeat_interleave(torch.arange(len(lengths), device=logits.device),
                                       torch.tensor(list(lengths), device=logits.device))
    return _SegmentLogps.apply(logits, targets, segments, len(lengths))
