"""Plan execution: run directories, resume, chaining, failure isolation, seeding, parallel workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.io_utils import read_json, read_jsonl
from common.runner import main
from tests.toy_family import TOY_FAMILY


def run_plan_file(tmp_path: Path, configurations: list[dict], *extra_args: str, **plan_fields) -> int:
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"name": "toy plan", "configurations": configurations, **plan_fields}))
    return main(TOY_FAMILY, ["--plan_config_path", str(plan_path), *extra_args])


def two_runs(tmp_path: Path, **base) -> list[dict]:
    base = {"experiment_name": "toy_{target}", "outputs_dir": str(tmp_path / "out"), "target": 1.0,
            "save_metric_plots": False, **base}
    return [{"base_config": base, "options": {"target": [1.0, 2.0]}}]


def test_run_directory_layout(tmp_path):
    assert run_plan_file(tmp_path, two_runs(tmp_path, save_metric_plots=True)) == 0
    run_dir = tmp_path / "out" / "toy_1-0"
    assert read_json(run_dir / "status.json")["status"] == "done"
    config = read_json(run_dir / "config.json")
    assert config["target"] == 1.0 and config["random_seed"] >= 0
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]
    assert read_json(run_dir / "summary.json")["seed"] == config["random_seed"]
    assert (run_dir / "run.log").read_text()
    assert (run_dir / "plots" / "overview.png").stat().st_size > 0  # labelled panels, not one PNG per metric
    plan_status = read_json(tmp_path / "out" / "toyplan.plan_status.json")
    assert [r["status"] for r in plan_status["runs"]] == ["done", "done"]
    assert "toy_2-0" in (tmp_path / "out" / "toyplan.plan.log").read_text()


def test_same_plan_twice_gives_identical_summaries(tmp_path):
    assert run_plan_file(tmp_path, two_runs(tmp_path)) == 0
    first = read_json(tmp_path / "out" / "toy_1-0" / "summary.json")
    assert run_plan_file(tmp_path, two_runs(tmp_path), "--rerun") == 0
    assert read_json(tmp_path / "out" / "toy_1-0" / "summary.json") == first


def test_resume_skips_done_and_redoes_interrupted(tmp_path):
    assert run_plan_file(tmp_path, two_runs(tmp_path)) == 0
    done_dir, crashed_dir = tmp_path / "out" / "toy_1-0", tmp_path / "out" / "toy_2-0"
    done_mtime = (done_dir / "summary.json").stat().st_mtime_ns
    # simulate kill -9 during the second run: status stays "running", summary missing, junk left behind
    (crashed_dir / "summary.json").unlink()
    (crashed_dir / "status.json").write_text(json.dumps({"status": "running"}))
    (crashed_dir / "half_written.tmp").write_text("junk")
    assert run_plan_file(tmp_path, two_runs(tmp_path)) == 0
    assert (done_dir / "summary.json").stat().st_mtime_ns == done_mtime  # not rerun
    assert read_json(crashed_dir / "status.json")["status"] == "done"
    assert not (crashed_dir / "half_written.tmp").exists()  # redone from a clean directory


def test_changed_config_is_rerun(tmp_path):
    assert run_plan_file(tmp_path, two_runs(tmp_path)) == 0
    before = read_json(tmp_path / "out" / "toy_1-0" / "summary.json")
    assert run_plan_file(tmp_path, two_runs(tmp_path, steps=5)) == 0
    after = read_json(tmp_path / "out" / "toy_1-0" / "summary.json")
    assert after["final_value"] != before["final_value"]


def test_failed_and_nan_runs_are_isolated(tmp_path):
    out = str(tmp_path / "out")
    configurations = [
        {"base_config": {"experiment_name": "ok", "outputs_dir": out, "save_metric_plots": False}},
        {"base_config": {"experiment_name": "boom", "outputs_dir": out, "fail": True}},
        {"base_config": {"experiment_name": "nan", "outputs_dir": out, "make_nan": True}},
        {"base_config": {"experiment_name": "after_boom", "outputs_dir": out, "load_model_checkpoint": "{run:boom}"}},
    ]
    assert run_plan_file(tmp_path, configurations) == 1
    status = {name: read_json(tmp_path / "out" / name / "status.json") for name in ("ok", "boom", "nan")}
    assert status["ok"]["status"] == "done"
    assert status["boom"]["status"] == "failed" and "toy failure requested" in status["boom"]["traceback"]
    assert status["nan"]["status"] == "failed" and "NonFiniteLossError" in status["nan"]["error"]
    plan_runs = read_json(tmp_path / "out" / "toyplan.plan_status.json")["runs"]
    assert {r["name"]: r["status"] for r in plan_runs}["after_boom"] == "skipped"
    assert not (tmp_path / "out" / "after_boom").exists()


def test_chained_runs_execute_in_reference_order(tmp_path):
    out = str(tmp_path / "out")
    configurations = [
        {"base_config": {"experiment_name": "second", "outputs_dir": out, "load_model_checkpoint": "{run:first}"}},
        {"base_config": {"experiment_name": "first", "outputs_dir": out}},
    ]
    assert run_plan_file(tmp_path, configurations) == 0
    assert read_json(tmp_path / "out" / "second" / "summary.json")["upstream_found"] is True


def test_invalid_plan_exits_2_and_writes_nothing(tmp_path, capsys):
    configurations = two_runs(tmp_path, stepz=3)
    assert run_plan_file(tmp_path, configurations) == 2
    assert "unknown field 'stepz'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_runs_and_writes_nothing(tmp_path, capsys):
    assert run_plan_file(tmp_path, two_runs(tmp_path), "--dry_run") == 0
    printed = capsys.readouterr().out
    assert "toy_1-0" in printed and "toy_2-0" in printed and "seed=" in printed and "{'target': 2.0}" in printed
    assert not (tmp_path / "out").exists()


def test_parallel_workers_match_sequential(tmp_path):
    assert run_plan_file(tmp_path / "seq", two_runs(tmp_path / "seq")) == 0
    assert run_plan_file(tmp_path / "par", two_runs(tmp_path / "par"), num_parallel=2) == 0
    for name in ("toy_1-0", "toy_2-0"):
        sequential = read_json(tmp_path / "seq" / "out" / name / "summary.json")
        parallel = read_json(tmp_path / "par" / "out" / name / "summary.json")
        assert sequential == parallel


@pytest.mark.parametrize("model", ["tiny-gpt2"])
def test_end_to_end_on_tiny_model(tmp_path, model):
    assert run_plan_file(tmp_path, two_runs(tmp_path, model=model)) == 0
    summaries = [read_json(tmp_path / "out" / name / "summary.json") for name in ("toy_1-0", "toy_2-0")]
    assert summaries[0]["first_logit"] == summaries[1]["first_logit"]  # same fixed-seed model in both runs
    # common.models builds tiny-gpt2 from a fixed seed: its logit of token 0 after [1, 2, 3] is this literal
    assert summaries[0]["first_logit"] == pytest.approx(-0.0654013, abs=1e-6)
