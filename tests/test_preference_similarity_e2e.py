"""End to end on tiny-gpt2 with real UltraFeedback pairs: similarity script -> quantile plan through the real
runner -> results printer.

Run: python -m pytest tests/test_preference_similarity_e2e.py -x -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import compute_preference_similarity_per_example as similarity_script
import preference_similarity_results_printer as printer
from common.io_utils import read_json, read_jsonl
from common.runner import main
from preference_similarity.experiment import FAMILY
from tests.conftest import real_data

MAX_LENGTH = 32


def write_plan(tmp_path: Path, similarity_path: Path) -> Path:
    train, held_out = real_data("ultrafeedback/train_1000.jsonl"), real_data("ultrafeedback/eval_200.jsonl")
    base = {
        "experiment_name": "{pref_similarity_measure}_q{quantile}_seed{random_seed}",
        "outputs_dir": str(tmp_path / "outputs"), "model": "tiny-gpt2", "dataset": str(train),
        "dataset_format": "ultrafeedback", "max_input_length": MAX_LENGTH, "truncation": "keep_response",
        "similarity_results_path": str(similarity_path),
        "pref_similarity_measure": "ches_scores", "quantile": 0.0, "preference_num_samples": 4,
        "eval_dataset": str(held_out), "num_eval_samples": 2, "objective": "dpo", "kl_coeff": 0.1,
        "optimizer": "adam", "lr": 1e-3, "batch_size": 2, "epochs": 1, "random_seed": 0, "save_metric_plots": False,
    }
    plan = {
        "name": "similarity_e2e", "description": "two measures x two quantiles, a second seed for CHES",
        "configurations": [
            {"base_config": base,
             "options": {"pref_similarity_measure": ["ches_scores", "minus_normalized_edit_distances"],
                         "quantile": [0.0, 1.0]}},
            {"base_config": dict(base, random_seed=1), "options": {"quantile": [0.0, 1.0]}},
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_similarity_quantile_plan_end_to_end(tmp_path, capsys):
    train = real_data("ultrafeedback/train_1000.jsonl")
    similarity_path = similarity_script.main([
        "--model", "tiny-gpt2", "--dataset", str(train), "--dataset_format", "ultrafeedback",
        "--num_train_samples", "10", "--train_samples_random_seed", "1", "--max_input_length", str(MAX_LENGTH),
        "--truncation", "keep_response", "--prompt_format", "plain", "--batch_size", "4",
        "--output_dir", str(tmp_path / "similarity"), "--device", "cpu", "--dont_save_logs"])
    assert main(FAMILY, ["--plan_config_path", str(write_plan(tmp_path, similarity_path))]) == 0

    outputs = tmp_path / "outputs"
    runs = {path.name: read_json(path / "summary.json")
            for path in outputs.iterdir() if (path / "summary.json").exists()}
    assert sorted(runs) == sorted(["ches_scores_q0-0_seed0", "ches_scores_q1-0_seed0", "ches_scores_q0-0_seed1",
                                   "ches_scores_q1-0_seed1", "minus_normalized_edit_distances_q0-0_seed0",
                                   "minus_normalized_edit_distances_q1-0_seed0"])
    low, high = runs["ches_scores_q0-0_seed0"], runs["ches_scores_q1-0_seed0"]
    assert low["selection/num_selected"] == high["selection/num_selected"] == low["num_train_pairs"] == 4
    assert low["selection/score_max"] <= high["selection/score_min"]  # window at the bottom vs at the top
    # The seed-1 runs select the same pairs as the seed-0 runs: their reference log-probs come from the cache.
    assert runs["ches_scores_q0-0_seed1"]["reference_cache_hit/train"] is True
    assert runs["ches_scores_q0-0_seed0"]["reference_cache_hit/train"] is False
    evals = read_jsonl(outputs / "ches_scores_q0-0_seed0" / "eval_metrics.jsonl")
    assert [e["step"] for e in evals] == [0, 2]
    assert evals[0]["eval_metrics/test/loss"] == pytest.approx(math.log(2), abs=1e-6)
    metrics = read_jsonl(outputs / "ches_scores_q0-0_seed0" / "metrics.jsonl")
    assert [m["loss"] for m in metrics if "loss" in m][0] == pytest.approx(math.log(2), abs=1e-6)

    capsys.readouterr()
    rows = printer.main(["--outputs_dir", str(outputs)])
    table = capsys.readouterr().out
    assert "| ches_scores | 0.00 | 2 |" in table
    assert [(r["measure"], r["quantile"], r["num_runs"]) for r in rows] == [
        ("ches_scores", 0.0, 2), ("ches_scores", 1.0, 2),
        ("minus_normalized_edit_distances", 0.0, 1), ("minus_normalized_edit_distances", 1.0, 1)]
    values = [runs[name][printer.DEFAULT_METRIC] for name in ("ches_scores_q0-0_seed0", "ches_scores_q0-0_seed1")]
    assert rows[0]["mean"] == pytest.approx(sum(values) / 2)
    for suffix in (".png", ".md", ".json"):
        assert (outputs / f"{printer.OUTPUT_STEM}{suffix}").stat().st_size > 0
    examples = json.loads((outputs / f"{printer.EXAMPLES_STEM}.json").read_text())  # similarity file x run tensors
    assert {e["measure"]: e["num_points"] for e in examples} == {"ches_scores": 16,
                                                                  "minus_normalized_edit_distances": 8}
    assert json.loads((outputs / f"{printer.OUTPUT_STEM}.json").read_text())[0]["num_runs"] == 2
