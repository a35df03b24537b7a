"""Tests for common/tracker.py: formulas against hand-computed values."""

import math

import pytest
import torch
from safetensors.torch import load_file

from common.tracker import DisplacementTracker, largest_decrease, largest_decrease_per_example


def test_largest_decrease_hand_values():
    """[0.5, 0.7, 0.2, 0.6, 0.1]: best pair is t=1 (0.7), t'=4 (0.1) -> 0.6.
    Monotone increasing [0.1, 0.2, 0.3] -> 0. Single point -> 0. [0.9, 0.3, 0.8, 0.5] -> 0.9 - 0.3 = 0.6."""
    assert largest_decrease(torch.tensor([0.5, 0.7, 0.2, 0.6, 0.1])) == pytest.approx(0.6)
    assert largest_decrease(torch.tensor([0.1, 0.2, 0.3])) == 0.0
    assert largest_decrease(torch.tensor([0.4])) == 0.0
    per_example = largest_decrease_per_example(torch.tensor([[0.9, 0.1], [0.3, 0.2], [0.8, 0.3], [0.5, 0.25]]))
    # column 0: 0.9 - 0.3 = 0.6; column 1: max so far 0.3 at t=2, then 0.25 -> 0.05
    assert per_example.tolist() == pytest.approx([0.6, 0.05])


def test_largest_decrease_rejects_bad_shape():
    with pytest.raises(ValueError, match="1-D"):
        largest_decrease(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        largest_decrease_per_example(torch.zeros(3))


def _log(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_tracker_updates_and_per_example():
    """Two examples, preferred probs  ex0: 0.5 -> 0.6 -> 0.3 ;  ex1: 0.2 -> 0.1 -> 0.4.
    ex0: change log(0.3/0.5) = -0.5108; largest decrease 0.6 - 0.3 = 0.3; min 0.3; fell since init.
    ex1: change log(0.4/0.2) = +0.6931; largest decrease 0.2 - 0.1 = 0.1; min 0.1; did not fall overall.
    Step 1: ex1 fell since prev (1/2). Step 2: ex0 fell since prev (1/2)."""
    tracker = DisplacementTracker(2, example_ids=[7, 3])
    s0 = tracker.update(0, _log([0.5, 0.2]), _log([0.4, 0.6]), losses=torch.tensor([1.0, 2.0]))
    assert s0["displacement/preferred_logprob_change_mean"] == 0.0
    assert s0["displacement/frac_preferred_fell_since_prev"] == 0.0
    assert s0["displacement/preferred_logprob_mean"] == pytest.approx((math.log(0.5) + math.log(0.2)) / 2)
    assert s0["displacement/loss_mean"] == pytest.approx(1.5)
    assert not any(key.startswith("logps/") for key in s0)  # the trainers' mini-batch keys are never overwritten
    s1 = tracker.update(1, _log([0.6, 0.1]), _log([0.3, 0.6]), losses=torch.tensor([0.9, 2.5]))
    assert s1["displacement/frac_preferred_fell_since_prev"] == 0.5
    assert s1["displacement/frac_preferred_fell_since_init"] == 0.5
    assert s1["displacement/frac_loss_fell_since_prev"] == 0.5
    assert s1["displacement/largest_preferred_prob_decrease_mean"] == pytest.approx(0.05)  # (0 + 0.1) / 2
    s2 = tracker.update(2, _log([0.3, 0.4]), _log([0.2, 0.5]), losses=torch.tensor([0.8, 2.4]))
    assert s2["displacement/preferred_logprob_change_mean"] == pytest.approx(
        (math.log(0.3 / 0.5) + math.log(0.4 / 0.2)) / 2)
    assert s2["displacement/dispreferred_logprob_change_mean"] == pytest.approx(
        (math.log(0.2 / 0.4) + math.log(0.5 / 0.6)) / 2)

    per = tracker.per_example()
    assert per["example_ids"].tolist() == [7, 3]
    assert per["initial_preferred_prob"].tolist() == pytest.approx([0.5, 0.2])
    assert per["min_preferred_prob"].tolist() == pytest.approx([0.3, 0.1])
    assert per["final_preferred_prob"].tolist() == pytest.approx([0.3, 0.4])
    assert per["largest_preferred_prob_decrease"].tolist() == pytest.approx([0.3, 0.1])
    assert per["preferred_prob_fell"].tolist() == [True, False]
    assert per["num_steps_preferred_fell_since_prev"].tolist() == [1, 1]
    assert per["loss_ever_increased"].tolist() == [False, True]

    summary = tracker.summary()
    assert summary["num_updates"] == 3 and summary["last_step"] == 2
    assert summary["largest_preferred_prob_decrease_mean"] == pytest.approx(0.2)
    assert summary["largest_preferred_prob_decrease_std"] == pytest.approx(0.1)
    assert summary["num_examples_preferred_prob_fell"] == 1
    assert summary["frac_examples_loss_ever_increased"] == 0.5
    # mean loss 1.5 -> 1.7 -> 1.6: increased once
    assert summary["mean_loss_ever_increased"] is True


def test_tracker_save_tensors_roundtrip(tmp_path):
    tracker = DisplacementTracker(1)
    tracker.update(0, _log([0.5]), _log([0.5]))
    tracker.update(5, _log([0.4]), _log([0.3]))
    path = tmp_path / "t.safetensors"
    tracker.save_tensors(path, extra={"geometry/inner_product": torch.tensor([1.5])})
    loaded = load_file(str(path))
    assert loaded["steps"].tolist() == [0, 5]
    assert loaded["preferred_logprobs"].shape == (2, 1)
    assert loaded["per_example/largest_preferred_prob_decrease"].tolist() == pytest.approx([0.1])
    assert loaded["geometry/inner_product"].tolist() == [1.5]
    assert "losses" not in loaded


def test_tracker_input_errors():
    tracker = DisplacementTracker(2)
    with pytest.raises(ValueError, match="expected one per tracked example"):
        tracker.update(0, torch.zeros(3), torch.zeros(2))
    tracker.update(0, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="not after"):
        tracker.update(0, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="at every update"):
        tracker.update(1, torch.zeros(2), torch.zeros(2), losses=torch.zeros(2))
    with pytest.raises(RuntimeError, match="no update"):
        DisplacementTracker(1).summary()
