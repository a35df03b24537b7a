"""`--executor ray`: a local 2-CPU Ray instance runs plans through `common.runner.main` like the local executor."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest

from common.io_utils import read_json
from common.plan import RunSpec
from common.runner import main
from tests.toy_family import TOY_FAMILY, ToyConfig

RUN_NAMES = ("a", "b", "c", "d")


def run_plan_file(plan_dir: Path, configurations: list[dict], *extra_args: str) -> int:
    plan_dir.mkdir(parents=True, exist_ok=True)
    plan_path = plan_dir / "plan.json"
    plan_path.write_text(json.dumps({"name": "ray plan", "configurations": configurations}))
    return main(TOY_FAMILY, ["--plan_config_path", str(plan_path), *extra_args])


def chained_runs(outputs_dir: Path) -> list[dict]:
    """a -> b, a -> c -> d (listed out of order; `{run:...}` references fix the order), on tiny-gpt2."""
    def run(name: str, upstream: str = "") -> dict:
        return {"base_config": {"experiment_name": name, "outputs_dir": str(outputs_dir), "model": "tiny-gpt2",
                                "target": float(RUN_NAMES.index(name)), "save_metric_plots": False,
                                "load_model_checkpoint": f"{{run:{upstream}}}" if upstream else ""}}
    return [run("d", "c"), run("b", "a"), run("c", "a"), run("a")]


def plan_statuses(outputs_dir: Path) -> dict[str, str]:
    return {r["name"]: r["status"] for r in read_json(outputs_dir / "rayplan.plan_status.json")["runs"]}


def visible_devices(family, spec: RunSpec, assigned_gpu: int | None, *rest) -> tuple[int | None, str | None]:
    """Stands in for `execute_run` inside a Ray task: what the run would be told and what CUDA would see."""
    return assigned_gpu, os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def running_ray():
    """A Ray instance started by the caller (stands in for a running cluster), with 2 CPUs and one logical GPU
    (Ray only books it; nothing touches CUDA); stopped after the test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_missing_ray_names_the_install_command(monkeypatch):
    from common.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "ray\[default\]'):
        RayExecutor()


def test_chained_plan_gives_the_sequential_summaries(tmp_path, monkeypatch):
    """Ray started for the plan (2 CPUs) runs a -> b, a -> c -> d like the sequential executor, then stops."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    monkeypatch.setattr(ray, "init", functools.partial(ray.init, num_cpus=2, include_dashboard=False))
    assert run_plan_file(tmp_path / "ray", chained_runs(tmp_path / "ray" / "out"), "--executor", "ray") == 0
    assert not ray.is_initialized()  # the executor started this instance, so it shut it down
    assert run_plan_file(tmp_path / "seq", chained_runs(tmp_path / "seq" / "out")) == 0
    for name in RUN_NAMES:
        ray_summary = read_json(tmp_path / "ray" / "out" / name / "summary.json")
        assert ray_summary == read_json(tmp_path / "seq" / "out" / name / "summary.json")
        assert ray_summary["first_logit"] == pytest.approx(-0.0654013, abs=1e-6)  # tiny-gpt2, as test_runner
        assert read_json(tmp_path / "ray" / "out" / name / "status.json")["status"] == "done"
    assert read_json(tmp_path / "ray" / "out" / "d" / "summary.json")["upstream_found"] is True
    assert plan_statuses(tmp_path / "ray" / "out") == dict.fromkeys(RUN_NAMES, "done")


def test_running_instance_failures_resume_and_gpus(tmp_path, running_ray):
    """On an already running instance (one Ray start for all three checks, the machine is small):
    1. a failing run, its skipped dependent and a run asking for more GPUs than any node has are isolated, and
       a second invocation resumes (the done run is cached); Ray stays up (not started by the executor);
    2. GPU assignment is Ray's: a run with num_gpus=1 is told cuda:0 and CUDA sees only the GPU Ray booked for
       it (id 0 of 1); a run with num_gpus=0 is told no GPU and CUDA sees none; the runner's GPU (7) is ignored."""
    from common.ray_executor import RayExecutor

    out = str(tmp_path / "out")
    configurations = [
        {"base_config": {"experiment_name": "ok", "outputs_dir": out, "save_metric_plots": False}},
        {"base_config": {"experiment_name": "boom", "outputs_dir": out, "fail": True}},
        {"base_config": {"experiment_name": "after_boom", "outputs_dir": out, "load_model_checkpoint": "{run:boom}"}},
        {"base_config": {"experiment_name": "needs_gpus", "outputs_dir": out, "num_gpus": 2.0}},
    ]
    assert run_plan_file(tmp_path, configurations, "--executor", "ray") == 1
    assert plan_statuses(tmp_path / "out") == {"ok": "done", "boom": "failed", "after_boom": "skipped",
                                               "needs_gpus": "failed"}
    assert "toy failure requested" in read_json(tmp_path / "out" / "boom" / "status.json")["traceback"]
    plan_runs = read_json(tmp_path / "out" / "rayplan.plan_status.json")["runs"]
    assert "no node of the Ray cluster" in {r["name"]: r["error"] for r in plan_runs}["needs_gpus"]
    assert running_ray.is_initialized()
    assert run_plan_file(tmp_path, configurations, "--executor", "ray") == 1
    assert plan_statuses(tmp_path / "out")["ok"] == "cached"

    def spec(name: str, num_gpus: float) -> RunSpec:
        return RunSpec(name, tmp_path / name, ToyConfig(experiment_name=name, num_gpus=num_gpus), 0, {})

    with RayExecutor() as executor:
        gpu_run = executor.submit(visible_devices, TOY_FAMILY, spec("gpu", 1.0), 7)
        cpu_run = executor.submit(visible_devices, TOY_FAMILY, spec("cpu", 0.0), 7)
        assert gpu_run.result(timeout=120) == (0, "0")
        assert cpu_run.result(timeout=120) == (None, "")
