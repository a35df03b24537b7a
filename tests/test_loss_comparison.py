"""Loss-comparison printer: aggregation against hand-computed values on synthetic run directories, the CLI's
errors, and end to end on a tiny-gpt2 persona plan with three losses through the real runner.

Run: python -m pytest tests/test_loss_comparison.py -x -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.io_utils import read_json
from common.loss_comparison import OBJECTIVE_ORDER, aggregate, find_runs, format_markdown, setting_label
from common.losses import LOSSES
from common.runner import main as runner_main
from loss_comparison_results_printer import PLOT_FILE, RESULTS_FILE, TABLE_FILE, main as printer_main
from persona_experiments.trainer import FAMILY as PERSONA_FAMILY
from tests.conftest import DEMO_PERSONA_DATASET


def write_run(root: Path, name: str, config: dict, summary: dict | None, status: str = "done") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": status}))
    (run_dir / "config.json").write_text(json.dumps({"model": "m", "lr": 1e-6, "kl_coeff": 0.1, **config}))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def tracker_summary(change: float, dis_change: float, largest: float, frac: float, prefix: str = "") -> dict:
    return {f"{prefix}preferred_logprob_change_mean": change, f"{prefix}dispreferred_logprob_change_mean": dis_change,
            f"{prefix}largest_preferred_prob_decrease_mean": largest,
            f"{prefix}frac_examples_preferred_prob_fell": frac}


def entanglement(cosine: float, predicted: float, accuracy: float) -> dict:
    return {"grad_entanglement/cosine": cosine, "grad_entanglement/chosen_decrease_predicted": predicted,
            "grad_entanglement/chosen_decrease_accuracy": accuracy}


# The field that tells each family apart (common/run_family.py); the printer reads the summary where it writes it.
PERSONA = {"output_tokens_matching_yes": ["Yes"]}
DATASET_LEVEL = {"pref_similarity_measure": "ches_scores"}


@pytest.fixture
def synthetic_runs(tmp_path) -> Path:
    """Two persona dpo runs, one persona cross_entropy run (no diagnostics), one dataset-level dpo run, and three
    skipped: an unfinished run, a run of another family (no displacement keys), a diverged run (NaN -> null)."""
    root = tmp_path / "runs"
    write_run(root, "dpo_a", {"objective": "dpo", **PERSONA},
              {**tracker_summary(-1.0, -3.0, 0.02, 1.0), **entanglement(0.5, 1.0, 0.5)})
    write_run(root, "dpo_b", {"objective": "dpo", **PERSONA},
              {**tracker_summary(0.5, -1.0, 0.0, 0.0), **entanglement(0.3, 0.0, 1.0)})
    write_run(root, "sft", {"objective": "cross_entropy", **PERSONA}, tracker_summary(2.0, 1.0, 0.0, 0.0))
    write_run(root, "nested/seq_dpo", {"objective": "dpo", **DATASET_LEVEL},
              {**tracker_summary(-0.5, -2.0, 1e-70, 0.75, prefix="tracker/train/"),
               "preferred_logprob_change_mean": 99.0})  # a dataset-level run is read under tracker/train/
    write_run(root, "crashed", {"objective": "dpo", **PERSONA}, None, status="running")
    write_run(root, "toy", {"objective": "dpo"}, {"final_loss": 0.1})
    write_run(root, "diverged", {"objective": "dpo", **PERSONA}, {**tracker_summary(-1.0, -3.0, 0.02, 1.0),
                                                                   "preferred_logprob_change_mean": None})
    return root


def test_objective_order_is_the_registry_order():
    assert OBJECTIVE_ORDER == tuple(LOSSES)


def test_setting_label():
    """Set fields with their symbols, lr last; None, False and sft_coeff 0 are left out."""
    config = {"kl_coeff": 0.1, "label_smoothing": 0.1, "simpo_gamma": None, "sft_coeff": 0.0,
              "ipo_length_normalized": False, "lr": 1e-6}
    assert setting_label(config) == "β=0.1, ε=0.1, lr=1e-06"
    assert setting_label({"kl_coeff": 2.0, "simpo_gamma": 1.0, "sft_coeff": 0.5, "ipo_length_normalized": True}) \
        == "β=2, γ=1, sft=0.5, ipo_len_norm"


def test_aggregation_matches_hand_computed_values(synthetic_runs):
    """Persona dpo row over runs a (Δ+ = -1.0) and b (Δ+ = +0.5):
    displaced 1/2 (only a has Δ+ < 0); mean Δ+ = (-1.0 + 0.5)/2 = -0.25, population std = |(-1.0) - (-0.25)| = 0.75;
    mean Δ- = (-3 - 1)/2 = -2; largest decrease (0.02 + 0)/2 = 0.01; examples fell (1 + 0)/2 = 0.5;
    cosine (0.5 + 0.3)/2 = 0.4; predicted (1 + 0)/2 = 0.5; accuracy (0.5 + 1)/2 = 0.75."""
    runs, notes = find_runs([synthetic_runs])
    assert len(runs) == 4 and len(notes) == 3
    assert any("diverged" in n and "expected a number" in n for n in notes)
    assert any("incomplete" in n and "crashed" in n for n in notes)
    assert any("toy" in n and "neither" in n for n in notes)
    sections = {(s["kind"], s["model"]): s["rows"] for s in aggregate(runs)}
    persona = sections[("persona single-token", "m")]
    assert [row["objective"] for row in persona] == ["cross_entropy", "dpo"]  # registry order
    dpo = persona[1]
    assert dpo["setting"] == "β=0.1, lr=1e-06"
    assert (dpo["num_runs"], dpo["num_displaced"], dpo["frac_displaced"]) == (2, 1, 0.5)
    expected = {"preferred_logprob_change_mean": -0.25, "preferred_logprob_change_std": 0.75,
                "dispreferred_logprob_change_mean": -2.0, "largest_preferred_prob_decrease_mean": 0.01,
                "frac_examples_preferred_fell_mean": 0.5, "grad_cosine_mean": 0.4,
                "chosen_decrease_predicted_mean": 0.5, "chosen_decrease_accuracy_mean": 0.75}
    for key, value in expected.items():
        assert dpo[key] == pytest.approx(value), key
    sft = persona[0]
    assert sft["num_displaced"] == 0 and sft["grad_cosine_mean"] is None
    # The dataset-level run is read from tracker/train/ (the top-level key of this kind is ignored).
    (sequence,) = sections[("dataset-level, training pairs", "m")]
    assert sequence["preferred_logprob_change_mean"] == -0.5 and sequence["num_displaced"] == 1
    assert sequence["frac_examples_preferred_fell_mean"] == 0.75


def test_markdown_table(synthetic_runs):
    table = format_markdown(aggregate(find_runs([synthetic_runs])[0]))
    assert "### m — persona single-token" in table and "### m — dataset-level, training pairs" in table
    assert "| dpo | β=0.1, lr=1e-06 | 2 | 1/2 | 0.50 | -0.250 ± 0.750 | -2.000 | 0.01 | 0.400 | 0.50 / 0.75 |" in table
    assert "| cross_entropy | β=0.1, lr=1e-06 | 1 | 0/1 | 0.00 | +2.000 ± 0.000 | +1.000 | 0 | — | — / — |" in table


def test_printer_errors_exit_2(tmp_path, capsys):
    assert printer_main(["--experiments_dir", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert printer_main(["--experiments_dir", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err
    write_run(tmp_path / "only_crashed", "crashed", {"objective": "dpo"}, None, status="failed")
    assert printer_main(["--experiments_dir", str(tmp_path / "only_crashed")]) == 2
    assert "no finished run" in capsys.readouterr().err


def _tiny_persona_plan(outputs_dir: Path) -> dict:
    base = {"experiment_name": "{objective}_s{train_samples_random_seed}", "outputs_dir": str(outputs_dir),
            "model": "tiny-gpt2", "dataset": DEMO_PERSONA_DATASET, "device": "cpu", "epochs": 3, "lr": 1e-3,
            "answer_matching_behavior_to_use": "Yes",
            "train_samples_random_seed": 1, "objective": "dpo", "save_metric_plots": False,
            "log_top_token_logit_change_interval": None, "grad_entanglement_interval": 1,
            "grad_entanglement_max_examples": 1, "grad_entanglement_params": "last_layer"}
    seeds = {"train_samples_random_seed": [1, 2]}
    return {"name": "tiny_loss_comparison", "configurations": [
        {"base_config": base, "options": {"objective": ["dpo", "ipo"], **seeds}},
        {"base_config": {**base, "objective": "cdpo", "label_smoothing": 0.1}, "options": seeds}]}


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model gains nothing from two, and the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_end_to_end_on_tiny_persona_plan(tmp_path, capsys, one_thread):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(_tiny_persona_plan(tmp_path / "out")))
    assert runner_main(PERSONA_FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    assert printer_main(["--experiments_dir", str(tmp_path / "out"), "--output_dir", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "### tiny-gpt2 — persona single-token" in printed
    results = read_json(tmp_path / "report" / RESULTS_FILE)
    (section,) = results["sections"]
    rows = {row["objective"]: row for row in section["rows"]}
    assert list(rows) == ["dpo", "ipo", "cdpo"]
    assert rows["cdpo"]["setting"] == "β=0.1, ε=0.1, lr=0.001"
    for objective, row in rows.items():
        summaries = [read_json(tmp_path / "out" / f"{objective}_s{seed}" / "summary.json") for seed in (1, 2)]
        changes = [s["preferred_logprob_change_mean"] for s in summaries]
        assert row["num_runs"] == 2
        assert row["num_displaced"] == sum(c < 0 for c in changes)
        assert row["preferred_logprob_change_mean"] == pytest.approx(sum(changes) / 2)
        assert row["grad_cosine_mean"] == pytest.approx(sum(s["grad_entanglement/cosine"] for s in summaries) / 2)
    assert (tmp_path / "report" / TABLE_FILE).read_text().count("| ipo |") == 1
    assert (tmp_path / "report" / PLOT_FILE).stat().st_size > 0  # bars of displacement and gradient cosine per loss
