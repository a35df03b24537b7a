"""End to end: an SFT -> DPO chained plan on tiny-gpt2 through the real runner, then the results printer on it."""

import json
import math
from pathlib import Path

import pytest

from common.io_utils import read_json, read_jsonl
from common.plan import load_plan
from common.runner import main
from persona_experiments.config import PersonaConfig
from persona_experiments.trainer import FAMILY
from persona_single_example_results_printer import main as printer_main
from tests.conftest import DEMO_PERSONA_DATASET

PLANS_DIR = Path(__file__).resolve().parents[1] / "persona_experiments" / "experiments_plans"


def _chained_plan(outputs_dir: Path) -> dict:
    common = {"outputs_dir": str(outputs_dir), "model": "tiny-gpt2", "dataset": DEMO_PERSONA_DATASET, "device": "cpu",
              "epochs": 2, "lr": 1e-3,
              "answer_matching_behavior_to_use": "Yes", "train_samples_random_seed": 1, "save_metric_plots": False}
    seeds = {"train_samples_random_seed": [1, 2]}
    return {"name": "tiny_sft_dpo", "configurations": [
        {"base_config": {**common, "experiment_name": "sft_s{train_samples_random_seed}", "objective": "cross_entropy",
                         "save_model": True}, "options": seeds},
        {"base_config": {**common, "experiment_name": "dpo_s{train_samples_random_seed}", "objective": "dpo",
                         "load_model_checkpoint": "{run:sft_s{train_samples_random_seed}}/model"}, "options": seeds},
    ]}


@pytest.fixture(scope="module")
def plan_outputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("persona_plan")
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(_chained_plan(root / "out")))
    assert main(FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    return root / "out"


def test_chained_plan_runs_sft_then_dpo(plan_outputs):
    for seed in (1, 2):
        sft, dpo = plan_outputs / f"sft_s{seed}", plan_outputs / f"dpo_s{seed}"
        assert read_json(dpo / "status.json")["status"] == "done"
        assert (sft / "model" / "config.json").exists()
        dpo_metrics = read_jsonl(dpo / "metrics.jsonl")
        assert dpo_metrics[0]["step"] == 0 and dpo_metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        # DPO starts from the SFT model: its initial preferred log-prob is SFT's final one
        sft_summary, dpo_summary = read_json(sft / "summary.json"), read_json(dpo / "summary.json")
        assert dpo_summary["initial_preferred_logprob_mean"] == pytest.approx(
            sft_summary["final_preferred_logprob_mean"], abs=1e-4)
        assert sft_summary["preferred_logprob_change_mean"] > 0


def test_summaries_identical_across_reruns_timings_in_status(plan_outputs, tmp_path):
    """Same plan into a fresh directory: byte-identical summary.json; wall-clock timings live in status.json."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(_chained_plan(tmp_path / "out")))
    assert main(FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    for run in ("sft_s1", "dpo_s2"):
        first, again = plan_outputs / run / "summary.json", tmp_path / "out" / run / "summary.json"
        assert first.read_bytes() == again.read_bytes()
        timings = read_json(again.parent / "status.json")["timings"]
        assert timings["seconds_per_step_mean"] > 0 and timings["total_seconds"] >= timings["setup_seconds"]


def test_printer_on_plan_outputs(plan_outputs, tmp_path, capsys):
    incomplete = plan_outputs / "crashed_run"
    incomplete.mkdir(exist_ok=True)
    (incomplete / "status.json").write_text(json.dumps({"status": "running"}))
    assert printer_main(["--experiments_dir", str(plan_outputs), "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "skipping incomplete run" in printed and "crashed_run" in printed
    assert "tiny-gpt2 dpo (ckpt) 'Yes' vs 'No'" in printed
    results = read_json(tmp_path / "results.json")
    settings = results["settings"]
    assert len(settings) == 2  # SFT (base) and DPO (from checkpoint)
    dpo = next(stats for label, stats in settings.items() if " dpo " in label)
    assert dpo["num_runs"] == 2 and dpo["num_used"] + dpo["num_unstable"] == 2
    assert dpo["initial_preferred_prob_mean"]["mean"] > 0
    assert dpo["top_tokens_by_prob_increase"] and "start/cosine" in dpo["geometry"]
    assert (tmp_path / "trajectories.png").stat().st_size > 0


def test_printer_bad_directory(tmp_path, capsys):
    assert printer_main(["--experiments_dir", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert printer_main(["--experiments_dir", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err


@pytest.mark.parametrize("plan_file", sorted(PLANS_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_plans_validate(plan_file):
    plan = load_plan(plan_file, PersonaConfig, check_input_files=False)  # the data set may be absent offline
    assert plan.runs


def test_multi_token_output_fails_plan_validation(tmp_path, capsys):
    """A token that is not one vocabulary token of a built-in model is an invalid plan (exit 2), with suggestions."""
    plan = {"name": "bad", "configurations": [{"base_config": {
        "experiment_name": "bad", "outputs_dir": str(tmp_path / "out"), "model": "tiny-gpt2",
        "output_tokens_matching_yes": ["Yes "]}}]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    assert main(FAMILY, ["--plan_config_path", str(plan_path)]) == 2
    error = capsys.readouterr().err
    assert "output_tokens_matching_yes: output token 'Yes '" in error and "'Yes' -> 'Yes'" in error
