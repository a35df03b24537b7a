"""Results aggregation (persona_experiments/results.py) on hand-made summaries."""

from pathlib import Path

import pytest

from persona_experiments.results import RunRecord, aggregate_top_tokens, summarize_runs


def _run(name, initial, final, minimum, decrease, unstable=False, tokens=()):
    summary = {"initial_preferred_prob_mean": initial, "final_preferred_prob_mean": final,
               "min_preferred_prob_mean": minimum, "largest_preferred_prob_decrease_mean": decrease,
               "loss_ever_increased": unstable, "preferred_token_texts": ["No"], "dispreferred_token_texts": ["no"],
               "geometry/start/cosine": 0.8,
               "final_top_tokens": [{"by_prob_increase": [{"token": t, "increase": v} for t, v in tokens]}]}
    return RunRecord(Path(name), {"model": "m", "objective": "dpo", "kl_coeff": 0.1, "lr": 1e-6}, summary)


def test_aggregate_top_tokens():
    """Lists [While +0.2, That +0.1] and [While +0.4] -> While: 2 lists, mean 0.3; That: 1 list, mean 0.1."""
    runs = [_run("a", 0.1, 0.1, 0.1, 0, tokens=[("While", 0.2), ("That", 0.1)]),
            _run("b", 0.1, 0.1, 0.1, 0, tokens=[("While", 0.4)])]
    rows = aggregate_top_tokens(runs)
    assert [r["token"] for r in rows] == ["While", "That"]
    assert rows[0]["count"] == 2 and rows[0]["mean_increase"] == pytest.approx(0.3)


def test_summarize_excludes_unstable_unless_kept():
    """Stable runs: initial 0.2 and 0.4 (mean 0.3, std 0.1), finals 0.1 and 0.5 -> one fell (0.2 -> 0.1).
    The unstable run (initial 0.9) is excluded by default and included with keep_unstable."""
    runs = [_run("r1", 0.2, 0.1, 0.1, 0.1), _run("r2", 0.4, 0.5, 0.4, 0.0), _run("r3", 0.9, 0.2, 0.2, 0.7, True)]
    (stats,) = summarize_runs(runs, keep_unstable=False).values()
    assert stats["num_runs"] == 3 and stats["num_unstable"] == 1 and stats["num_used"] == 2
    assert stats["num_preferred_final_below_initial"] == 1
    assert stats["initial_preferred_prob_mean"]["mean"] == pytest.approx(0.3)
    assert stats["initial_preferred_prob_mean"]["std"] == pytest.approx(0.1)
    assert stats["largest_preferred_prob_decrease_mean"]["mean"] == pytest.approx(0.05)
    assert stats["geometry"]["start/cosine"] == pytest.approx(0.8)
    (kept,) = summarize_runs(runs, keep_unstable=True).values()
    assert kept["num_used"] == 3 and kept["num_preferred_final_below_initial"] == 2
