"""Reliability of plan execution (issue 15): ownership, identity of a finished run, locking, dead workers, Ctrl-C.

Concurrency tests use real processes (`python -c ... main(...)`) and real signals (SIGKILL, SIGINT). A toy run
waits at step 0 for a gate file, so a test can order the processes without relying on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ExperimentFamily
from common.io_utils import read_json, read_jsonl
from common.models import load_model_and_tokenizer, save_model
from common.plan import load_plan
from common.run_state import MARKER_FILE, claim_run_dir, file_fingerprint
from common.runner import EXIT_INTERRUPTED, execute_run, main
from tests.toy_family import TOY_FAMILY, ToyConfig, run_toy

REPO = Path(__file__).resolve().parents[1]
PLAN_PROCESS = ("import sys; from common.runner import main; from tests.toy_family import TOY_FAMILY; "
                "raise SystemExit(main(TOY_FAMILY, sys.argv[1:]))")


def write_plan(path: Path, configurations: list[dict], **fields) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": path.stem, "configurations": configurations, **fields}))
    return path


def run(name: str, out: Path, **fields) -> dict:
    return {"base_config": {"experiment_name": name, "outputs_dir": str(out), "save_metric_plots": False, **fields}}


def statuses(out: Path, plan_name: str) -> dict[str, str]:
    return {r["name"]: r["status"] for r in read_json(out / f"{plan_name}.plan_status.json")["runs"]}


def start_plan_process(plan: Path, log_path: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-c", PLAN_PROCESS, "--plan_config_path", str(plan), *args],
                            cwd=REPO, env=env, stdout=log_path.with_suffix(".out").open("w"),
                            stderr=log_path.open("w"), **popen)


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status_is(run_dir: Path, state: str) -> bool:
    try:
        return read_json(run_dir / "status.json")["status"] == state
    except (FileNotFoundError, ValueError, KeyError):
        return False


# 1. ownership ---------------------------------------------------------------------------------------------------
def test_foreign_model_folder_under_outputs_dir_is_never_deleted(tmp_path):
    out = tmp_path / "out"
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    save_model(model, tokenizer, out / "my_model")
    (out / "my_model" / "notes.txt").write_text("my notes")
    before = sorted(p.name for p in (out / "my_model").iterdir())
    plan = write_plan(tmp_path / "p.json", [run("my_model", out)])
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 1
    assert sorted(p.name for p in (out / "my_model").iterdir()) == before  # nothing deleted, nothing added
    assert (out / "my_model" / "notes.txt").read_text() == "my notes"
    (result,) = read_json(out / "p.plan_status.json")["runs"]
    assert result["error"].startswith(f"{out / 'my_model'} exists and was not made by this toolkit")


# 2. identity of a finished run = config + inputs + parents ------------------------------------------------------
def test_redone_parent_redoes_its_dependent(tmp_path):
    out = tmp_path / "out"

    def plan(lr: float) -> Path:
        return write_plan(tmp_path / "chain.json", [run("child", out, load_model_checkpoint="{run:parent}"),
                                                    run("parent", out, lr=lr)])

    assert main(TOY_FAMILY, ["--plan_config_path", str(plan(0.1))]) == 0
    first_stamp = read_json(out / "child" / "status.json")["completion"]
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan(0.1))]) == 0
    assert statuses(out, "chain") == {"child": "cached", "parent": "cached"}
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan(0.2))]) == 0
    assert statuses(out, "chain") == {"child": "done", "parent": "done"}
    child_status = read_json(out / "child" / "status.json")
    assert child_status["completion"] != first_stamp
    # the child's checkpoint field names the parent's directory, whose files were rewritten too
    reason = f"input 'load_model_checkpoint' ({out / 'parent'}) changed; parent run 'parent' was redone"
    assert child_status["redo_reason"] == reason
    plan_log = (out / "chain.plan.log").read_text()
    assert "run parent was redone: config changed: lr" in plan_log
    assert f"run child was redone: {reason}" in plan_log


def test_changed_input_file_content_redoes_the_runs_that_read_it(tmp_path):
    out, data = tmp_path / "out", tmp_path / "similarity.txt"
    data.write_text("abc")
    plan = write_plan(tmp_path / "inputs.json", [run("a", out, data_file=str(data)), run("b", out)])
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 0
    os.utime(data, ns=(1, 1))  # same content, other mtime: still the same input
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 0
    assert statuses(out, "inputs") == {"a": "cached", "b": "cached"}
    data.write_text("abd")  # same size, other content
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 0
    assert statuses(out, "inputs") == {"a": "done", "b": "cached"}
    assert read_json(out / "a" / "summary.json")["data"] == "abd"
    assert f"run a was redone: input 'data_file' ({data}) changed" in (out / "inputs.plan.log").read_text()


def test_file_fingerprint_is_content_for_small_files_and_size_mtime_for_large(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_bytes(b"abc")
    assert file_fingerprint(path) == {  # SHA-256("abc") from FIPS 180-2, appendix B.1
        "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    os.utime(path, ns=(5, 1234567890))
    monkeypatch.setattr("common.run_state.HASH_LIMIT_BYTES", 2)
    assert file_fingerprint(path) == {"size": 3, "mtime_ns": 1234567890}


# 3. locking: a second process waits; kill -9 of the first; "done" only by the writer --------------------------
@pytest.mark.parametrize("kill_first", [False, True], ids=["both_finish", "kill_9_first"])
def test_second_process_on_a_plan_waits_for_the_first(tmp_path, kill_first):
    out, gate = tmp_path / "out", tmp_path / "gate"
    plan = write_plan(tmp_path / "shared.json", [run("slow", out, steps=5, wait_for_file=str(gate))])
    first = start_plan_process(plan, tmp_path / "first.err")
    wait_until(lambda: status_is(out / "slow", "running"), "the first process to start the run")
    second = start_plan_process(plan, tmp_path / "second.err")
    wait_until(lambda: "being run by another process" in (tmp_path / "second.err").read_text(),
               "the second process to wait for the lock")
    if kill_first:
        first.kill()  # SIGKILL in the middle of the run: its lock goes with it
        assert first.wait(60) == -signal.SIGKILL
    gate.touch()
    assert second.wait(120) == 0
    if not kill_first:
        assert first.wait(120) == 0
    # the results table the second process printed (the plan_status.json is the last process's)
    (table_row,) = [line.split() for line in (tmp_path / "second.out").read_text().splitlines() if "slow" in line]
    assert table_row[:2] == ["slow", "done" if kill_first else "cached"]
    assert read_json(out / "slow" / "status.json")["status"] == "done"
    assert [r["step"] for r in read_jsonl(out / "slow" / "metrics.jsonl")] == [0, 1, 2, 3, 4]  # one writer only
    if kill_first:
        assert read_json(out / "slow" / "status.json")["redo_reason"] == "previous attempt is running"


def test_done_is_not_written_into_a_directory_taken_over_during_the_run(tmp_path):
    def run_and_lose_directory(config, ctx):
        summary = run_toy(config, ctx)
        claim_run_dir(ctx.run_dir, config.experiment_name, "another plan", replace_finished=True)
        return summary

    family = ExperimentFamily("toy", ToyConfig, run_and_lose_directory)
    plan = load_plan(write_plan(tmp_path / "p.json", [run("r", tmp_path / "out")]), ToyConfig)
    result = execute_run(family, plan.runs[0], None, {}, plan_key="this plan")
    assert result.status == "failed" and "taken over by another process" in result.error
    assert not (tmp_path / "out" / "r" / "status.json").exists()  # the other owner's directory is left alone
    assert read_json(tmp_path / "out" / "r" / MARKER_FILE)["plan"] == "another plan"


# 4. another plan's finished run in the same directory -----------------------------------------------------------
def test_another_plans_finished_run_is_kept_unless_rerun(tmp_path):
    out = tmp_path / "out"
    plan_a = write_plan(tmp_path / "a.json", [run("run", out, target=1.0)])
    plan_b = write_plan(tmp_path / "b.json", [run("run", out, target=2.0)])
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan_a)]) == 0
    summary_a = read_json(out / "run" / "summary.json")
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan_b)]) == 1
    (result,) = read_json(out / "b.plan_status.json")["runs"]
    assert result["error"].startswith(f"{out / 'run'} holds a finished run of another plan ({plan_a.resolve()})")
    assert read_json(out / "run" / "summary.json") == summary_a
    assert read_json(out / "run" / "config.json")["target"] == 1.0
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan_b), "--rerun"]) == 0
    assert read_json(out / "run" / "config.json")["target"] == 2.0


# 6. a worker killed with SIGKILL fails its run only ------------------------------------------------------------
def test_dead_worker_fails_only_its_run(tmp_path):
    out = tmp_path / "out"
    plan = write_plan(tmp_path / "par.json", [run("victim", out, kill_self_at_step=1),
                                              run("sibling", out, sleep_per_step=0.5), run("third", out)],
                      num_parallel=2)
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 1
    assert statuses(out, "par") == {"victim": "failed", "sibling": "done", "third": "done"}
    victim = read_json(out / "victim" / "status.json")
    assert victim["status"] == "failed" and victim["error"].startswith("worker died")
    assert "killed by signal SIGKILL (9)" in victim["error"]
    assert "worker died" in (out / "par.plan.log").read_text()


# 12. Ctrl-C -----------------------------------------------------------------------------------------------------
def test_keyboard_interrupt_records_interrupted_and_exits_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    plan = write_plan(tmp_path / "ki.json", [run("first", out), run("second", out, interrupt_at_step=1)])
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == EXIT_INTERRUPTED
    assert read_json(out / "second" / "status.json")["status"] == "interrupted"
    assert read_json(out / "first" / "status.json")["status"] == "done"
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error")] == [
        "error: interrupted (Ctrl-C); run(s) second recorded as 'interrupted' (finished runs are kept); run the plan "
        "again to resume"]
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == EXIT_INTERRUPTED  # still interrupting: redone


@pytest.mark.parametrize("num_parallel", [1, 2])
def test_sigint_to_a_plan_process_records_interrupted(tmp_path, num_parallel):
    out, gate = tmp_path / "out", tmp_path / "never"
    plan = write_plan(tmp_path / "sig.json", [run(f"r{i}", out, wait_for_file=str(gate)) for i in range(2)],
                      num_parallel=num_parallel)
    process = start_plan_process(plan, tmp_path / "err", start_new_session=True)
    wait_until(lambda: all(status_is(out / f"r{i}", "running") for i in range(num_parallel)), "runs to start")
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    assert process.wait(120) == EXIT_INTERRUPTED
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C)")
    for i in range(num_parallel):
        assert read_json(out / f"r{i}" / "status.json")["status"] == "interrupted"


def test_describe_exit():
    from common.worker_pool import describe_exit

    assert describe_exit(-9) == "killed by signal SIGKILL (9)"
    assert describe_exit(-2) == "killed by signal SIGINT (2)"
    assert describe_exit(3) == "exited with code 3"


def test_family_configs_declare_their_input_file_fields():
    import dataclasses

    from preference_training.config import PreferenceTrainingConfig
    from persona_experiments.config import PersonaConfig
    from sorrybench.experiment import SorryBenchConfig

    assert PersonaConfig.input_file_fields() == ("dataset", "load_model_checkpoint")
    assert PreferenceTrainingConfig.input_file_fields() == ("dataset", "eval_dataset", "similarity_results_path",
                                                            "load_model_checkpoint")
    assert SorryBenchConfig.input_file_fields() == PreferenceTrainingConfig.input_file_fields()
    for config_cls in (PersonaConfig, PreferenceTrainingConfig, SorryBenchConfig, ToyConfig):
        names = {f.name for f in dataclasses.fields(config_cls)}
        assert set(config_cls.input_file_fields()) <= names, config_cls
