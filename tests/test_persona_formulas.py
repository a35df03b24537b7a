"""Persona formulas against hand-computed values: unembedding geometry, hidden norms, top-k increases and ranks."""

import math

import pytest
import torch

from persona_experiments.geometry import hidden_norm_metrics, nearest_unembedding_neighbours, unembedding_pair_geometry
from persona_experiments.recording import token_metric_name
from persona_experiments.token_tracking import rank_of_token, top_token_changes


def test_unembedding_pair_geometry_hand_values():
    """W+ = (3, 4), W- = (3, 0): ||W+|| = 5, ||W-|| = 3, <W+, W-> = 9, cosine 9/15 = 0.6, projection 9/5 = 1.8,
    orthogonal part (3, 0) - (9/25)(3, 4) = (1.92, -1.44), norm sqrt(3.6864 + 2.0736) = 2.4, 9 - 25 = -16.
    Second pair swaps roles: W+ = (3, 0), W- = (3, 4): projection 9/3 = 3, orthogonal (0, 4) -> 4, 9 - 9 = 0."""
    unembedding = torch.tensor([[3.0, 4.0], [3.0, 0.0], [0.0, 1.0]])
    geometry = unembedding_pair_geometry(unembedding, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert geometry["preferred_norm"].tolist() == pytest.approx([5.0, 3.0])
    assert geometry["dispreferred_norm"].tolist() == pytest.approx([3.0, 5.0])
    assert geometry["inner_product"].tolist() == pytest.approx([9.0, 9.0])
    assert geometry["cosine"].tolist() == pytest.approx([0.6, 0.6])
    assert geometry["projection_coef"].tolist() == pytest.approx([1.8, 3.0])
    assert geometry["orthogonal_norm"].tolist() == pytest.approx([2.4, 4.0])
    assert geometry["inner_minus_preferred_sq"].tolist() == pytest.approx([-16.0, 0.0])


def test_nearest_unembedding_neighbours():
    """Cosines with row 0 = (1, 0): row 1 (1, 1) -> 0.7071, row 2 (0, 1) -> 0, row 3 (-1, 0) -> -1."""
    unembedding = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    ids, cosines = nearest_unembedding_neighbours(unembedding, 0, k=2)
    assert ids.tolist() == [1, 2]
    assert cosines.tolist() == pytest.approx([1 / math.sqrt(2), 0.0], abs=1e-6)


def test_hidden_norm_metrics():
    """h_0 = (3, 4), h_t = (6, 8): ||h_t|| = 10, change 10 - 5 = 5, ||h_t - h_0|| = ||(3, 4)|| = 5."""
    metrics = hidden_norm_metrics(torch.tensor([[6.0, 8.0]]), torch.tensor([[3.0, 4.0]]))
    assert metrics["hidden_norm"].tolist() == pytest.approx([10.0])
    assert metrics["hidden_norm_change"].tolist() == pytest.approx([5.0])
    assert metrics["hidden_distance"].tolist() == pytest.approx([5.0])


def test_rank_of_token():
    """Scores [0.1, 0.5, 0.3, 0.5]: token 2 has two larger scores -> rank 3; token 1 ties with 3 -> rank 1."""
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [0.1, 0.5, 0.3, 0.5]])
    assert rank_of_token(scores, torch.tensor([2, 1])).tolist() == [3, 1]


def test_top_token_changes_hand_values():
    """Initial probs [0.5, 0.3, 0.2] -> current [0.2, 0.3, 0.5].
    Probability increases: [-0.3, 0.0, +0.3] -> top-2 ids [2, 1]; preferred token 0 has rank 3.
    Log-prob increases: [ln 0.4, 0, ln 2.5] = [-0.916, 0, 0.916] -> top-2 ids [2, 1]; rank of token 0 is 3."""
    initial = torch.tensor([[0.5, 0.3, 0.2]]).log()
    current = torch.tensor([[0.2, 0.3, 0.5]]).log()
    changes = top_token_changes(current, initial, torch.tensor([0]), k=2)
    assert changes.prob_increase_ids.tolist() == [[2, 1]]
    assert changes.prob_increase_values.tolist()[0] == pytest.approx([0.3, 0.0], abs=1e-6)
    assert changes.logprob_increase_ids.tolist() == [[2, 1]]
    assert changes.logprob_increase_values.tolist()[0] == pytest.approx([math.log(2.5), 0.0], abs=1e-6)
    assert changes.preferred_rank_by_prob_increase.tolist() == [3]
    assert changes.preferred_rank_by_logprob_increase.tolist() == [3]


def test_top_token_orderings_can_differ():
    """Initial [0.6, 0.39, 0.01] -> current [0.5, 0.45, 0.05]: by probability the largest gain is token 1 (+0.06 vs
    +0.04), by log-prob it is token 2 (ln 5 = 1.609 vs ln(0.45/0.39) = 0.143). Preferred token 1 ranks 1 and 2."""
    initial = torch.tensor([[0.6, 0.39, 0.01]]).log()
    current = torch.tensor([[0.5, 0.45, 0.05]]).log()
    changes = top_token_changes(current, initial, torch.tensor([1]), k=1)
    assert changes.prob_increase_ids.tolist() == [[1]]
    assert changes.logprob_increase_ids.tolist() == [[2]]
    assert changes.preferred_rank_by_prob_increase.tolist() == [1]
    assert changes.preferred_rank_by_logprob_increase.tolist() == [2]


def test_token_metric_name():
    assert token_metric_name(3363, " Yes") == "3363_yes"
    assert token_metric_name(7, "!!") == "7"
