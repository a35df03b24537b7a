"""Unembedding geometry of a (preferred, dispreferred) token pair and hidden-representation norms.

For unembedding rows W+ = W[y+] and W- = W[y-] (shape (d,)), Razin et al. (Thm. 2 / Sec. 3.2) relate
likelihood displacement in the single-token setting to how aligned W- is with W+: the preferred log-prob can
fall when the component of W- along W+ is large, i.e. when <W+, W-> approaches or exceeds ||W+||^2.

Quantities (per pair):
    preferred_norm       ||W+||
    dispreferred_norm    ||W-||
    inner_product        <W+, W->
    cosine               <W+, W-> / (||W+|| ||W-||)
    projection_coef      <W+, W-> / ||W+||                  (signed length of W-'s projection on W+)
    orthogonal_norm      ||W- - (<W+, W-> / ||W+||^2) W+||  (norm of W-'s part orthogonal to W+)
    inner_minus_preferred_sq  <W+, W-> - ||W+||^2          (> 0: W- has a larger component along W+ than
                                                            W+ itself, the regime in which the analysis
                                                            predicts the preferred log-prob can fall)
"""

from __future__ import annotations

import torch
from torch import Tensor


def unembedding_pair_geometry(unembedding: Tensor, preferred_ids: Tensor, dispreferred_ids: Tensor) -> dict[str, Tensor]:
    """Geometry of unembedding rows for each (y+, y-) pair.

    Args:
        unembedding: (V, d) output-embedding matrix W (logits = h @ W.T).
        preferred_ids: (N,) token ids y+.
        dispreferred_ids: (N,) token ids y-.

    Returns:
        Dict of GEOMETRY_KEYS -> (N,) float64 tensors on the CPU (see the module docstring for formulas).
        Example: W+ = (3, 4), W- = (3, 0): norms 5 and 3, inner 9, cosine 0.6, projection_coef 1.8,
        orthogonal part (3, 0) - 0.36 (3, 4) = (1.92, -1.44) with norm 2.4, inner_minus_preferred_sq -16.
    """
    with torch.no_grad():
        w_pos = unembedding[preferred_ids].detach().to(device="cpu", dtype=torch.float64)   # (N, d)
        w_neg = unembedding[dispreferred_ids].detach().to(device="cpu", dtype=torch.float64)  # (N, d)
        pos_norm = w_pos.norm(dim=-1)
        neg_norm = w_neg.norm(dim=-1)
        inner = (w_pos * w_neg).sum(dim=-1)
        orthogonal = w_neg - (inner / pos_norm.square()).unsqueeze(-1) * w_pos
        return {
            "preferred_norm": pos_norm,
            "dispreferred_norm": neg_norm,
            "inner_product": inner,
            "cosine": inner / (pos_norm * neg_norm),
            "projection_coef": inner / pos_norm,
            "orthogonal_norm": orthogonal.norm(dim=-1),
            "inner_minus_preferred_sq": inner - pos_norm.square(),
        }


def nearest_unembedding_neighbours(unembedding: Tensor, token_id: int, k: int) -> tuple[Tensor, Tensor]:
    """The k tokens (excluding `token_id`) whose unembedding rows have the largest cosine with W[token_id].

    Used to pick candidate displacement pairs (close unembeddings). Returns (ids (k,), cosines (k,)).
    """
    with torch.no_grad():
        weights = unembedding.detach().float()
        normalised = weights / weights.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cosines = normalised @ normalised[token_id]
        cosines[token_id] = -float("inf")
        values, ids = torch.topk(cosines, k)
        return ids.cpu(), values.cpu()


def hidden_norm_metrics(hidden: Tensor, initial_hidden: Tensor) -> dict[str, Tensor]:
    """Norm of the last-position hidden representation h_t and its change since initialisation.

    Args:
        hidden: (N, d) current hidden states at the prompt's last position (input to the unembedding).
        initial_hidden: (N, d) the same at initialisation.

    Returns:
        (N,) float64 CPU tensors: hidden_norm ||h_t||, hidden_norm_change ||h_t|| - ||h_0||,
        hidden_distance ||h_t - h_0||. Example: h_0 = (3, 4), h_t = (6, 8) -> 10, 5, 5.
    """
    with torch.no_grad():
        current = hidden.detach().to(device="cpu", dtype=torch.float64)
        initial = initial_hidden.detach().to(device="cpu", dtype=torch.float64)
        norm = current.norm(dim=-1)
        return {
            "hidden_norm": norm,
            "hidden_norm_change": norm - initial.norm(dim=-1),
            "hidden_distance": (current - initial).norm(dim=-1),
        }
