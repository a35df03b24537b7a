"""Plan-runner command line: --set overrides, --only selection, --list_fields, console lines and progress bars."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.cli_overrides import OverrideError, field_meanings, parse_overrides
from common.io_utils import read_json
from common.plan import apply_overrides
from common.runner import main
from preference_training.config import PreferenceTrainingConfig
from tests.toy_family import TOY_FAMILY, ToyConfig


def write_plan(tmp_path: Path, configurations: list[dict]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "cli plan", "configurations": configurations}))
    return path


def two_targets(tmp_path: Path) -> list[dict]:
    base = {"experiment_name": "toy_{target}", "outputs_dir": str(tmp_path / "out"), "target": 1.0,
            "save_metric_plots": False}
    return [{"base_config": base, "options": {"target": [1.0, 2.0]}}]


def chain(tmp_path: Path) -> list[dict]:
    out = str(tmp_path / "out")
    return [{"base_config": {"experiment_name": "child", "outputs_dir": out, "load_model_checkpoint": "{run:parent}",
                             "save_metric_plots": False}},
            {"base_config": {"experiment_name": "parent", "outputs_dir": out, "save_metric_plots": False}},
            {"base_config": {"experiment_name": "other", "outputs_dir": out, "save_metric_plots": False}}]


def test_set_values_are_typed_by_the_field():
    parsed = parse_overrides(["lr=1e-6", "steps=4", "fail=false", "tags=[\"a\", \"b\"]", "model=tiny-gpt2",
                              "random_seed=7"], ToyConfig)
    assert parsed == {"lr": 1e-06, "steps": 4, "fail": False, "tags": ["a", "b"], "model": "tiny-gpt2",
                      "random_seed": 7}
    assert parse_overrides(["tags=null"], ToyConfig) == {"tags": None}
    assert parse_overrides(["quantile=0.5", "num_train_samples=none"], PreferenceTrainingConfig) == {
        "quantile": 0.5, "num_train_samples": None}


@pytest.mark.parametrize(("assignment", "message"), [
    ("lrr=0.1", "--set lrr: unknown field 'lrr' of ToyConfig (did you mean 'lr'?)"),
    ("steps=two", "--set steps=two: field 'steps' must be int, got 'two'"),
    ("fail=maybe", "--set fail=maybe: field 'fail' must be bool, got 'maybe'"),
    ("steps", "--set 'steps': expected key=value (e.g. --set lr=1e-6)"),
])
def test_set_errors_name_the_key(assignment, message):
    with pytest.raises(OverrideError) as error:
        parse_overrides([assignment], ToyConfig)
    assert str(error.value) == message


def test_set_replaces_base_config_and_option_lists():
    raw = {"configurations": [{"base_config": {"lr": 0.1, "target": 1.0}, "options": {"target": [1.0, 2.0]}}]}
    assert apply_overrides(raw, {"target": 3.0, "steps": 5}) == {
        "configurations": [{"base_config": {"lr": 0.1, "target": 3.0, "steps": 5}, "options": {}}]}
    assert raw["configurations"][0]["base_config"] == {"lr": 0.1, "target": 1.0}  # the input is not changed


def test_set_reaches_every_run(tmp_path):
    plan = write_plan(tmp_path, two_targets(tmp_path))
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--set", "steps=2", "--set", "lr=0.5"]) == 0
    for name in ("toy_1-0", "toy_2-0"):
        config = read_json(tmp_path / "out" / name / "config.json")
        assert (config["steps"], config["lr"]) == (2, 0.5)


def test_set_unknown_key_exits_2_with_suggestion(tmp_path, capsys):
    plan = write_plan(tmp_path, two_targets(tmp_path))
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--set", "step=2"]) == 2
    assert "error: --set step: unknown field 'step' of ToyConfig (did you mean 'steps'?)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_only_runs_the_named_run_and_its_missing_parent(tmp_path):
    plan = write_plan(tmp_path, chain(tmp_path))
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--only", "child"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["child", "parent"]
    stamp = read_json(tmp_path / "out" / "parent" / "status.json")["completion"]
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--only", "child", "--rerun"]) == 0
    assert read_json(tmp_path / "out" / "parent" / "status.json")["completion"] == stamp  # done parent left alone
    status = read_json(tmp_path / "out" / "cliplan.plan_status.json")
    assert [run["name"] for run in status["runs"]] == ["child"]


def test_only_unknown_name_exits_2_with_suggestion(tmp_path, capsys):
    plan = write_plan(tmp_path, chain(tmp_path))
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--only", "chlid"]) == 2
    assert ("error: --only: no run named 'chlid' (did you mean 'child'?) in plan 'cli plan'"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_field_meanings_read_both_docstring_styles():
    meanings = field_meanings(PreferenceTrainingConfig)
    assert meanings["lr"] == "Learning rate (the paper's value for OLMo/Gemma/Llama)."
    # RunConfig now in the TRL style too (issue 14): the default sits in the entry's parenthesis, not the text
    assert meanings["outputs_dir"] == "Parent directory; the run writes to `<outputs_dir>/<experiment_name>`."
    assert meanings["kl_coeff"].startswith("beta, the preference strength")


def test_list_fields_prints_type_default_and_meaning(capsys):
    from preference_similarity.experiment import FAMILY

    assert main(FAMILY, ["--list_fields"]) == 0
    lines = capsys.readouterr().out.splitlines()
    position = lines.index("  lr  (float, default 1e-07)")
    assert lines[position + 1] == "      Learning rate (the paper's value for OLMo/Gemma/Llama)."
    assert "  max_input_length  (int or null, default 512)" in lines


def test_missing_plan_path_exits_2(capsys):
    assert main(TOY_FAMILY, []) == 2
    assert "error: --plan_config_path is required" in capsys.readouterr().err


def test_console_gets_one_line_per_run_and_run_log_the_config(tmp_path, caplog):
    plan = write_plan(tmp_path, two_targets(tmp_path))
    with caplog.at_level(logging.INFO):
        assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 0
    run_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run toy_1-0 on")]
    assert len(run_lines) == 1 and "'lr'" not in run_lines[0] and run_lines[0].endswith("toy_1-0/config.json")
    assert "'lr': 0.1" in (tmp_path / "out" / "toy_1-0" / "run.log").read_text()


def test_log_lines_go_through_tqdm_while_the_plan_runs(tmp_path, monkeypatch):
    import common.runner as runner

    handler_types = []
    original = runner.execute_run

    def spying_execute_run(*args, **kwargs):  # what the console handler is while a run executes
        handler_types.extend(type(h).__name__ for h in logging.getLogger().handlers)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "execute_run", spying_execute_run)
    assert main(TOY_FAMILY, ["--plan_config_path", str(write_plan(tmp_path, two_targets(tmp_path)))]) == 0
    assert "_TqdmLoggingHandler" in handler_types


def test_preference_plan_runner_with_set_and_only_on_tiny_gpt2(tmp_path):
    """The dataset-level family end to end: `--set` reaches the trainer (a linear schedule, clipping), `--only`
    runs one of two experiments."""
    from preference_similarity.experiment import FAMILY
    from tests.conftest import real_data

    base = {"experiment_name": "tiny_{objective}", "outputs_dir": str(tmp_path / "out"), "model": "tiny-gpt2",
            "dataset": str(real_data("ultrafeedback/train_1000.jsonl")), "num_train_samples": 4,
            "num_eval_samples": 0, "max_input_length": 32, "truncation": "keep_response", "objective": "dpo", "optimizer": "adam", "lr": 1e-3,
            "batch_size": 2, "epochs": 1, "random_seed": 0, "save_metric_plots": False}
    plan = write_plan(tmp_path, [{"base_config": base, "options": {"objective": ["dpo", "ipo"]}}])
    assert main(FAMILY, ["--plan_config_path", str(plan), "--only", "tiny_ipo", "--set", "lr_scheduler_type=linear",
                         "--set", "warmup_steps=1", "--set", "max_grad_norm=1.0"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "tiny_ipo"]
    records = [json.loads(line) for line in (tmp_path / "out" / "tiny_ipo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["lr"] for r in steps] == pytest.approx([0.0, 1e-3])  # 2 steps, 1 warm-up step: lr (0, 1) x 1e-3
    assert all("grad_norm" in r for r in steps)
    assert read_json(tmp_path / "out" / "tiny_ipo" / "config.json")["max_grad_norm"] == 1.0


def test_set_suggests_our_name_for_a_trl_name():
    with pytest.raises(OverrideError, match=r"--set optim: unknown field 'optim' of PreferenceTrainingConfig "
                                            r"\(did you mean 'optimizer'\?\)"):
        parse_overrides(["optim=adamw"], PreferenceTrainingConfig)
