"""common/grad_entanglement.py `EntanglementLog`: the one bookkeeping both trainers use, checked by hand."""

import pytest
import torch

from common.grad_entanglement import EntanglementLog, entanglement_from_gradients

COUNT = "grad_entanglement/num_steps"


def _example(chosen: list[float], rejected: list[float]) -> dict:
    """Per-example stats of g+ = chosen, g- = rejected at log pi(y+) = -1, log pi(y-) = -2."""
    stats = entanglement_from_gradients([torch.tensor(chosen)], [torch.tensor(rejected)])
    return {**stats, "logp_chosen": -1.0, "logp_rejected": -2.0}


def _two_steps() -> tuple[EntanglementLog, dict, dict, dict]:
    """Step A: ex1 g+ = (1, 0), g- = (2, 1) (cosine 2/sqrt 5 = 0.894427, both predicted to fall) and ex2
    g+ = (1, 0), g- = (0, 1) (cosine 0, nothing predicted); next log-probs ex1 (-1.5, -2.5): both fell, ex2 (-0.5, -3):
    preferred rose -> every prediction right. Step B: ex1 alone, next (-0.5, -3): predicted fall did not happen."""
    log = EntanglementLog()
    logged_a = log.measure([_example([1.0, 0.0], [2.0, 1.0]), _example([1.0, 0.0], [0.0, 1.0])])
    scored_a = log.score([-1.5, -0.5], [-2.5, -3.0])
    log.measure([_example([1.0, 0.0], [2.0, 1.0])])
    scored_b = log.score([-0.5, 99.0], [-3.0, 99.0])  # only the first len(pending) values are the examples'
    return log, logged_a, scored_a, scored_b


def test_measure_and_score_by_hand():
    log, logged_a, scored_a, scored_b = _two_steps()
    assert logged_a["grad_entanglement/cosine"] == pytest.approx(0.4472135955)
    assert logged_a["grad_entanglement/chosen_decrease_predicted"] == 0.5
    assert scored_a == {"grad_entanglement/chosen_decrease_accuracy": 1.0,
                        "grad_entanglement/both_decrease_accuracy": 1.0,
                        "grad_entanglement/chosen_decrease_observed": 0.5,
                        "grad_entanglement/both_decrease_observed": 0.5}
    assert scored_b["grad_entanglement/chosen_decrease_accuracy"] == 0.0
    assert scored_b["grad_entanglement/chosen_decrease_observed"] == 0.0
    assert log.num_diagnosed == 2 and log.score([-1.0], [-1.0]) == {}  # nothing pending after scoring


def test_summary_over_examples_pools_every_example():
    """Pooled over (ex1, ex2, ex1): cosine (0.894427 + 0 + 0.894427) / 3 = 0.596285, predicted 2/3; scores averaged
    over the two scored steps (1 and 0 -> 0.5; observed 0.5 and 0 -> 0.25); the count comes last."""
    summary = _two_steps()[0].summary_over_examples(COUNT)
    assert summary["grad_entanglement/cosine"] == pytest.approx(0.5962847940)
    assert summary["grad_entanglement/chosen_decrease_predicted"] == pytest.approx(2 / 3)
    assert summary["grad_entanglement/chosen_decrease_accuracy"] == 0.5
    assert summary["grad_entanglement/chosen_decrease_observed"] == 0.25
    assert "grad_entanglement/both_decrease_observed" not in summary
    assert list(summary)[-1] == COUNT and summary[COUNT] == 2


def test_summary_over_points_averages_step_means():
    """Mean of the step means: cosine (0.447214 + 0.894427) / 2 = 0.670820, predicted (0.5 + 1) / 2 = 0.75; the
    count comes first (dataset-level key)."""
    summary = _two_steps()[0].summary_over_points("grad_entanglement/num_points")
    assert list(summary)[0] == "grad_entanglement/num_points" and summary["grad_entanglement/num_points"] == 2
    assert summary["grad_entanglement/cosine"] == pytest.approx(0.6708203932)
    assert summary["grad_entanglement/chosen_decrease_predicted"] == 0.75
    assert summary["grad_entanglement/both_decrease_observed"] == 0.25


def test_unscored_steps_and_empty_log():
    log = EntanglementLog()
    assert log.summary_over_examples(COUNT) == {} and log.summary_over_points(COUNT) == {}
    assert log.measure([]) == {}
    log.measure([_example([1.0, 0.0], [2.0, 1.0])], score_later=False)  # persona mini-batches: never scored
    assert log.score([-5.0], [-5.0]) == {}
    summary = log.summary_over_examples(COUNT)
    assert summary[COUNT] == 1 and "grad_entanglement/chosen_decrease_accuracy" not in summary
