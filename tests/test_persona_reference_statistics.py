"""The reference printer's statistics (persona_experiments/reference_statistics.py) on hand-made trajectories."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from persona_experiments.reference_statistics import (decrease_flags, first_decrease_indices,
                                                      largest_decrease_interval, loss_fell_flags, lower_median,
                                                      top_token_table)
from persona_experiments.results import RunRecord, summarize_runs


def test_decrease_flags_and_first_index():
    """p = [.5, .45, .6, .7]: decreases 0 -> 1 only (reference index 0); [.3, .3, .2, .25]: 1 -> 2 (index 1);
    a trajectory that never decreases is left out."""
    values = np.array([[.5, .3, .1], [.45, .3, .2], [.6, .2, .3], [.7, .25, .4]])
    flags = decrease_flags(values)
    assert flags[:, 0].tolist() == [True, False, False]
    assert first_decrease_indices(flags).tolist() == [0, 1]


def test_loss_fell_is_less_or_equal():
    assert loss_fell_flags(np.array([.7, .6, .6, .65])).tolist() == [True, True, False]


def test_lower_median_like_torch():
    assert lower_median(np.array([4, 1, 3, 2])) == 2 and lower_median(np.array([3, 1, 2])) == 2


@pytest.mark.parametrize("values, expected", [
    ([.5, .7, .2, .6, .1], (1, 4)),   # 0.7 -> 0.1
    ([.5, .45, .6, .7], (0, 1)),      # the only decrease
    ([.3, .3, .2, .25], (0, 2)),      # tie 0 -> 2 and 1 -> 2 (both 0.1): the earlier start
    ([.1, .2, .3], (0, 0)),           # never decreases: (0, 0), decrease 0
])
def test_largest_decrease_interval(values, expected):
    assert largest_decrease_interval(np.array(values)) == expected


def test_top_token_table_counts_frequency_and_mean():
    """Lists [(7, a, .2), (9, b, .1)] and [(7, a, .4)], 2 examples: top-1 -> 7 twice (frequency 1, mean .3);
    top-2 adds id 9 once (frequency .5, mean .1)."""
    lists = [[(7, "a", .2), (9, "b", .1)], [(7, "a", .4)]]
    top1 = top_token_table(lists, 1, 2)
    assert [(r["id"], r["count"], r["frequency"]) for r in top1] == [(7, 2, 1.0)]
    assert top1[0]["mean_increase"] == pytest.approx(.3)
    top2 = top_token_table(lists, 2, 2)
    assert [(r["id"], r["count"], r["frequency"], r["mean_increase"]) for r in top2][1] == (9, 1, .5, .1)


def _write_run(root: Path, name: str, probs: list[list[float]], losses: list[float]) -> RunRecord:
    """A finished 1-example-per-column run directory with points at steps 0..T-1 (the last one after training)."""
    run_dir = root / name
    run_dir.mkdir()
    probs_array = np.array(probs, dtype=np.float64)  # (T, N)
    steps, num_examples = probs_array.shape
    save_file({
        "steps": np.arange(steps, dtype=np.int64),
        "preferred_logprobs": np.log(probs_array),
        "losses": np.repeat(np.array(losses, dtype=np.float64)[:, None], num_examples, axis=1),
        "per_example/example_ids": np.arange(num_examples, dtype=np.int64),
        "hidden/norms": np.array([[3.0] * num_examples] + [[4.0] * num_examples] * (steps - 1)),
        "hidden/distances": np.array([[0.0] * num_examples] + [[2.0] * num_examples] * (steps - 1)),
        **{f"geometry/{when}/{key}": np.full(num_examples, value) for when in ("start", "end")
           for key, value in (("preferred_norm", 5.0), ("dispreferred_norm", 3.0), ("inner_product", 9.0),
                              ("cosine", .6), ("projection_coef", 1.8), ("orthogonal_norm", 2.4),
                              ("inner_minus_preferred_sq", -16.0))},
    }, str(run_dir / "tensors.safetensors"))
    top = {"step": 1, "examples": [{"example_id": i, "by_prob_increase": [
        {"id": 3, "token": "Yes", "increase": 0.1 * (i + 1)}, {"id": 8, "token": "Sure", "increase": 0.01}]}
        for i in range(num_examples)]}
    (run_dir / "top_tokens.jsonl").write_text(json.dumps(top) + "\n")
    summary = {"num_steps": steps - 1, "initial_preferred_prob_mean": float(probs_array[0].mean()),
               "final_preferred_prob_mean": float(probs_array[-1].mean()), "loss_ever_increased": False,
               "preferred_token_texts": ["Yes"], "dispreferred_token_texts": ["No"]}
    return RunRecord(run_dir, {"model": "m", "objective": "dpo", "kl_coeff": 0.1, "lr": 1e-7}, summary)


def test_reference_block_on_hand_made_runs(tmp_path):
    """Run a: two examples, p = [.5, .45, .6, .7, .8] and [.3, .3, .2, .25, .4] (5 points = 4 steps + the final
    point, which the reference window leaves out), loss .7, .6, .5, .4, .3 (always falls).
    Run b: its loss rises at step 2, so the reference filter drops it.
    -> 2 examples, both decreased at some step (ours: final < initial in 0 runs), both while the loss fell;
    first decrease indices 0 and 1 (min 0, max 1, lower median 0, mean 0.5); largest prob decreases
    .45 - .5 = -.05 (steps 0 -> 1) and .2 - .3 = -.1 (0 -> 2): mean -.075, mean steps 0 -> 1.5; log-prob:
    ln .9 = -0.1053605 and ln(2/3) = -0.4054651, mean -0.2554128; top-1 at step 1: 'Yes' 2x, frequency 1,
    mean increase (.1 + .2) / 2 = .15; ||W+|| - projection coefficient 5 - 1.8 = 3.2; hidden norms: initial 3,
    final (last training forward) 4, change 2."""
    run_a = _write_run(tmp_path, "a", [[.5, .3], [.45, .3], [.6, .2], [.7, .25], [.8, .4]], [.7, .6, .5, .4, .3])
    run_b = _write_run(tmp_path, "b", [[.5, .3], [.6, .4], [.7, .5], [.8, .6], [.9, .7]], [.7, .6, .65, .4, .3])
    (stats,) = summarize_runs([run_a, run_b], keep_unstable=False).values()
    assert stats["num_preferred_final_below_initial"] == 0
    reference = stats["reference"]
    assert reference["excluded_runs"] == ["b"] and reference["num_examples"] == 2
    assert reference["num_examples_preferred_decreased_at_some_step"] == 2
    assert reference["num_examples_preferred_decreased_while_loss_fell"] == 2
    assert reference["num_examples_loss_increased"] == 0
    assert reference["first_decrease_index"] == {"min": 0, "max": 1, "median": 0.0, "mean": 0.5}
    prob = reference["largest_prob_decrease"]
    assert prob["mean"] == pytest.approx(-.075) and prob["start_step_mean"] == 0 and prob["end_step_mean"] == 1.5
    assert reference["largest_logprob_decrease"]["mean"] == pytest.approx(
        (math.log(.9) + math.log(2 / 3)) / 2) == pytest.approx(-0.2554128)
    top1 = reference["top_tokens_by_prob_increase"]["step_1"]["top_1"]
    assert [(r["token"], r["count"], r["frequency"]) for r in top1] == [("Yes", 2, 1.0)]
    assert top1[0]["mean_increase"] == pytest.approx(.15)
    assert reference["geometry"]["preferred_norm_minus_projection_coef"]["initial"] == pytest.approx(3.2)
    assert reference["hidden"] == {"initial_norm_mean": 3.0, "final_norm_mean": 4.0, "change_norm_mean": 2.0}
    (kept,) = summarize_runs([run_a, run_b], keep_unstable=True).values()
    assert kept["reference"]["num_examples"] == 4 and kept["reference"]["num_examples_loss_increased"] == 2


def test_single_trajectory_decreased_but_not_below_initial(tmp_path):
    """The issue's example p = [.5, .45, .6, .7] (+ final .7): decreased at some step = yes; final < initial = no."""
    run = _write_run(tmp_path, "one", [[.5], [.45], [.6], [.7], [.7]], [.7, .6, .5, .4, .4])
    (stats,) = summarize_runs([run], keep_unstable=False).values()
    assert stats["reference"]["num_examples_preferred_decreased_at_some_step"] == 1
    assert stats["num_preferred_final_below_initial"] == 0
