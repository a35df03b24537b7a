"""Which next tokens gained probability during training: top-k by increase, and the preferred token's rank.

Everything works on full next-token distributions at the prompt's last position, (N, V) log-probs, and uses
`torch.topk` plus an O(V) count for ranks (no full-vocabulary sort).

Definitions (per example, for the current log-probs l_t and the initial l_0 over the vocabulary):
    probability increase     exp(l_t[v]) - exp(l_0[v])
    log-prob increase        l_t[v] - l_0[v]
    rank of token y          1 + #{v : increase[v] > increase[y]}    (1 = largest increase; ties share a rank)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def rank_of_token(scores: Tensor, token_ids: Tensor) -> Tensor:
    """Rank of `token_ids[n]` in row n of `scores` when sorted descending (1 = largest; ties share a rank).

    Args:
        scores: (N, V) scores per token.
        token_ids: (N,) token to rank in each row.

    Returns:
        (N,) int64 ranks, 1 + number of tokens with a strictly larger score.
        Example: scores [0.1, 0.5, 0.3, 0.5], token 2 -> two larger scores -> rank 3.
    """
    own = scores.gather(1, token_ids.view(-1, 1))  # (N, 1)
    return (scores > own).sum(dim=1) + 1


@dataclass
class TopTokenChanges:
    """Top-k tokens by increase since initialisation, for N examples (all tensors on the CPU).

    Attributes:
        prob_increase_ids / prob_increase_values: (N, k) tokens with the largest probability increase.
        logprob_increase_ids / logprob_increase_values: (N, k) tokens with the largest log-prob increase (nats).
        preferred_rank_by_prob_increase / preferred_rank_by_logprob_increase: (N,) rank of y+ (1 = top).
    """

    prob_increase_ids: Tensor
    prob_increase_values: Tensor
    logprob_increase_ids: Tensor
    logprob_increase_values: Tensor
    preferred_rank_by_prob_increase: Tensor
    preferred_rank_by_logprob_increase: Tensor


def top_token_changes(logprobs: Tensor, initial_logprobs: Tensor, preferred_ids: Tensor, k: int) -> TopTokenChanges:
    """Top-k tokens by probability and by log-prob increase since init, and the preferred token's ranks.

    Args:
        logprobs: (N, V) current next-token log-probs.
        initial_logprobs: (N, V) the same at initialisation (same device).
        preferred_ids: (N,) preferred token y+ per example.
        k: Number of top tokens (clipped to V).

    Returns:
        TopTokenChanges (see its attributes). Example: initial probs [0.5, 0.3, 0.2], current [0.2, 0.3, 0.5]
        -> prob increases [-0.3, 0, 0.3], top-2 ids [2, 1]; preferred token 0 has rank 3.
    """
    with torch.no_grad():
        k = min(k, logprobs.shape[-1])
        prob_increase = logprobs.exp() - initial_logprobs.exp()
        logprob_increase = logprobs - initial_logprobs
        prob_top = torch.topk(prob_increase, k, dim=-1)
        logprob_top = torch.topk(logprob_increase, k, dim=-1)
        preferred_ids = preferred_ids.to(logprobs.device)
        return TopTokenChanges(
            prob_increase_ids=prob_top.indices.cpu(),
            prob_increase_values=prob_top.values.double().cpu(),
            logprob_increase_ids=logprob_top.indices.cpu(),
            logprob_increase_values=logprob_top.values.double().cpu(),
            preferred_rank_by_prob_increase=rank_of_token(prob_increase, preferred_ids).cpu(),
            preferred_rank_by_logprob_increase=rank_of_token(logprob_increase, preferred_ids).cpu(),
        )


def describe_top_tokens(changes: TopTokenChanges, tokenizer, example_index: int) -> dict[str, list]:
    """JSON-able view of one example's top tokens: ids, decoded strings and increases for both orderings."""
    def entries(ids: Tensor, values: Tensor) -> list[dict]:
        return [{"id": int(i), "token": tokenizer.decode([int(i)]), "increase": float(v)}
                for i, v in zip(ids[example_index], values[example_index])]

    return {
        "by_prob_increase": entries(changes.prob_increase_ids, changes.prob_increase_values),
        "by_logprob_increase": entries(changes.logprob_increase_ids, changes.logprob_increase_values),
        "preferred_rank_by_prob_increase": int(changes.preferred_rank_by_prob_increase[example_index]),
        "preferred_rank_by_logprob_increase": int(changes.preferred_rank_by_logprob_increase[example_index]),
    }
