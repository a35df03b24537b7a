"""The FLOP floor of a dataset-level DPO step on this CPU: the least work a step must do / the best matmul rate.

Work of one step (ours: reference log-probs precomputed, the prompt fed once per pair, the LM head only at response
positions; each pair fed as x_1..x_{P-1} | x_P y+_1..y+_{R+ - 1} | x_P y-_1..y-_{R- - 1}, see
`common.sequence_logprobs.packed_pair_inputs`):

    forward  = 2 * P_body * T_fed  +  2 * V * d * T_resp  +  4 * d * L * K
    step     = 3 * forward            (backward = 2x forward: gradients of activations and of weights)

P_body: parameters outside the (tied) embedding / LM-head matrix; T_fed = sum over pairs of (P - 1 + R+ + R-) fed
tokens; V x d: the LM head; T_resp = sum of R+ + R- (positions whose logits are needed); L layers; K = number of
(query, key) pairs attended, summed over pairs: the prefix queries i = 1..P-1 see i keys, response query j = 1..R
sees P - 1 + j keys (QK^T and the weighted sum of V cost 2 d each per pair). Norms, activations, softmax and the
optimizer are O(parameters + tokens x d) and left out, so the floor is a lower bound.
"""

from __future__ import annotations

import time
from typing import Sequence


def attended_pairs(prompt_length: int, response_lengths: Sequence[int]) -> int:
    """K of one packed pair: sum_{i<P} i + sum_R sum_{j<=R} (P - 1 + j). E.g. P 3, R (2, 1): 1+2 + (3+4) + 3 = 13."""
    prefix = prompt_length - 1
    total = prefix * (prefix + 1) // 2
    for length in response_lengths:
        total += length * prefix + length * (length + 1) // 2
    return total


def step_flops(body_parameters: int, vocab_size: int, hidden_size: int, num_layers: int, fed_tokens: int,
               response_tokens: int, attended: int) -> int:
    """3 * (2 P_body T_fed + 2 V d T_resp + 4 d L K), the FLOPs of one training step (module docstring).

    Example: P_body 10, T_fed 3, V 5, d 2, T_resp 2, L 1, K 6 -> 3 * (60 + 40 + 48) = 444.
    """
    forward = (2 * body_parameters * fed_tokens + 2 * vocab_size * hidden_size * response_tokens
               + 4 * hidden_size * num_layers * attended)
    return 3 * forward


def matmul_flops_per_second(rows: int = 2048, inner: int = 576, cols: int = 1536, repeats: int = 10,
                            seconds: float = 0.5) -> float:
    """Best fp32 matmul rate (FLOP/s, 2 m k n per product) in `repeats` timed bursts of about `seconds` each, with
    torch's current thread count. Default shapes: a SmolLM2 MLP projection over 2048 tokens."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    out = torch.empty(rows, cols)
    torch.matmul(a, b, out=out)  # warm-up
    best = 0.0
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.matmul(a, b, out=out)
            count += 1
        best = max(best, 2 * rows * inner * cols * count / (time.perf_counter() - started))
    return best
