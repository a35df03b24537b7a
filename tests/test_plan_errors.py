"""Plan-loading robustness (issue 15 items 5, 7, 9): each bad plan exits 2 with a clear message and writes nothing.

Every scenario runs the real plan runner (`common.runner.main`) on the toy family from an empty working directory
and checks the exit code, the message, and that neither outputs_dir nor the working directory got any file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.io_utils import read_json
from common.plan import PlanError, load_plan
from common.plan_checks import repetition_seed
from common.runner import main
from tests.toy_family import TOY_FAMILY, ToyConfig


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory (a plan log written 'nowhere' would land here)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def toy_plan(outputs_dir: Path, **fields) -> dict:
    base = {"experiment_name": "x", "outputs_dir": str(outputs_dir), "steps": 1}
    base.update(fields.pop("base", {}))
    return {"name": "p", "configurations": [{"base_config": base, "options": fields.pop("options", {})}], **fields}


def run_runner(tmp_path: Path, plan: dict | str | bytes, capsys, dry_run: bool = False) -> tuple[int, str]:
    path = tmp_path / "plan.json"
    if isinstance(plan, bytes):
        path.write_bytes(plan)
    else:
        path.write_text(plan if isinstance(plan, str) else json.dumps(plan), encoding="utf-8")
    code = main(TOY_FAMILY, ["--plan_config_path", str(path)] + (["--dry_run"] if dry_run else []))
    return code, capsys.readouterr().err


def assert_rejected(code: int, err: str, expected: str, workdir: Path, outputs_dir: Path | None = None) -> None:
    assert code == 2
    assert err.startswith("error: invalid plan ")
    assert expected in err
    assert list(workdir.iterdir()) == []
    if outputs_dir is not None:
        assert not outputs_dir.exists() or outputs_dir.is_file()


@pytest.mark.parametrize("name, expected", [
    ("/abs/path", "must be a plain name"),
    ("a/b", "must be a plain name"),
    ("bad\0name", "contains a NUL character"),
    ("é" * 130, "is 260 bytes in UTF-8 (at most 238)"),  # room kept for '.plan_status.json'
])
def test_plan_name_obeys_run_name_rules(tmp_path, workdir, capsys, name, expected):
    outputs = tmp_path / "out"
    code, err = run_runner(tmp_path, {**toy_plan(outputs), "name": name}, capsys)
    assert_rejected(code, err, expected, workdir, outputs)


@pytest.mark.parametrize("experiment_name, expected", [
    ("bad\0run", "contains a NUL character"),
    ("r" * 256, "is 256 bytes in UTF-8 (at most 255)"),
])
def test_run_name_with_nul_or_too_long(tmp_path, workdir, capsys, experiment_name, expected):
    outputs = tmp_path / "out"
    code, err = run_runner(tmp_path, toy_plan(outputs, base={"experiment_name": experiment_name}), capsys)
    assert_rejected(code, err, expected, workdir, outputs)


def test_repetitions_with_a_fixed_seed_get_distinct_recorded_seeds(tmp_path, workdir, capsys):
    outputs = tmp_path / "out"
    code, _ = run_runner(tmp_path, toy_plan(outputs, base={"random_seed": 42}, repetitions=3), capsys)
    assert code == 0
    seeds = [read_json(outputs / f"x_rep{r}" / "config.json")["random_seed"] for r in range(3)]
    assert seeds == [42, 1_000_045, 2_000_048]  # (42 + r * 1_000_003) mod 2**32
    summaries = [read_json(outputs / f"x_rep{r}" / "summary.json")["final_value"] for r in range(3)]
    assert len(set(summaries)) == 3  # different seeds -> different initial values -> different results


def test_repetition_seed_wraps_at_two_to_the_32():
    assert repetition_seed(2**32 - 1, 1) == 1_000_002  # (4294967295 + 1000003) - 4294967296


@pytest.mark.parametrize("plan_bytes, expected", [
    (b'{"name": "p\xe9", "configurations": []}', "not UTF-8 text (byte 11 is 0xe9)"),
    (b"[" * 100_000 + b"]" * 100_000, "nests objects/lists deeper than 64 levels"),
    (b'{"name": "p", "name": "q", "configurations": [{"base_config": {"experiment_name": "x"}}]}',
     "duplicate key 'name'"),
    (b'{"name": "p", "configurations": [{"base_config": {"experiment_name": "x", "lr": NaN}}]}',
     "'NaN' is not a valid JSON number"),
    (b'{"name": "p", "configurations": [{"base_config": {"experiment_name": "x", "lr": Infinity}}]}',
     "'Infinity' is not a valid JSON number"),
    (b'{"name": "p", "configurations": [{"base_config": {"experiment_name": "x", "lr": 1e999}}]}',
     "number 1e999 overflows to infinity"),
])
def test_malformed_plan_files(tmp_path, workdir, capsys, plan_bytes, expected):
    code, err = run_runner(tmp_path, plan_bytes, capsys)
    assert_rejected(code, err, expected, workdir)


def test_duplicate_keys_inside_base_config_are_named(tmp_path, workdir, capsys):
    text = '{"name": "p", "configurations": [{"base_config": {"experiment_name": "x", "lr": 0.1, "lr": 0.2}}]}'
    code, err = run_runner(tmp_path, text, capsys)
    assert_rejected(code, err, "duplicate key 'lr' in one object", workdir)


def test_directory_as_plan_path(tmp_path, workdir, capsys):
    assert main(TOY_FAMILY, ["--plan_config_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory; pass the path of a JSON plan file" in err
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("seed", [2**32, 2**40])
def test_seeds_of_two_to_the_32_or_more(tmp_path, workdir, capsys, seed):
    outputs = tmp_path / "out"
    code, err = run_runner(tmp_path, toy_plan(outputs, base={"random_seed": seed}), capsys)
    assert_rejected(code, err, f"field 'random_seed' must be in [0, 2**32) or -1, got {seed}", workdir, outputs)


@pytest.mark.parametrize("pool", [["0"], [True], [-1], [0.5]])
def test_gpu_ids_pool_entries_must_be_integers(tmp_path, workdir, capsys, pool):
    outputs = tmp_path / "out"
    code, err = run_runner(tmp_path, toy_plan(outputs, gpu_ids_pool=pool), capsys)
    assert_rejected(code, err, "plan field 'gpu_ids_pool' must list GPU indices (integers >= 0)", workdir, outputs)


def test_empty_configurations(tmp_path, workdir, capsys):
    code, err = run_runner(tmp_path, {"name": "p", "configurations": []}, capsys)
    assert_rejected(code, err, "plan field 'configurations' is empty", workdir)


@pytest.mark.parametrize("skip", [2, 5])
def test_skip_that_drops_every_run(tmp_path, workdir, capsys, skip):
    outputs = tmp_path / "out"
    plan = toy_plan(outputs, base={"experiment_name": "x{target}", "target": 1.0}, options={"target": [1.0, 2.0]},
                    skip=skip)
    code, err = run_runner(tmp_path, plan, capsys)
    assert_rejected(code, err, f"'skip' {skip} drops every run (2 configuration(s) expand to 2 run(s))", workdir,
                    outputs)


def test_tilde_in_outputs_dir_is_expanded(tmp_path, workdir, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    plan = toy_plan(Path("~/results"))
    plan["configurations"][0]["base_config"]["outputs_dir"] = "~/results"
    code, _ = run_runner(tmp_path, plan, capsys)
    assert code == 0
    assert (tmp_path / "home" / "results" / "x" / "summary.json").is_file()
    assert list(workdir.iterdir()) == []  # no literal ./~


def test_outputs_dir_that_is_a_file(tmp_path, workdir, capsys):
    outputs = tmp_path / "a_file"
    outputs.write_text("not a directory")
    code, err = run_runner(tmp_path, toy_plan(outputs / "sub"), capsys)
    assert_rejected(code, err, f"outputs_dir {outputs / 'sub'} cannot be created: {outputs} is a file", workdir)
    code, err = run_runner(tmp_path, toy_plan(outputs), capsys)
    assert_rejected(code, err, f"outputs_dir {outputs} is a file", workdir)
    assert outputs.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the check is simulated below")
def test_unwritable_outputs_dir(tmp_path, workdir, capsys):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, err = run_runner(tmp_path, toy_plan(parent / "out"), capsys)
    finally:
        parent.chmod(0o700)
    assert_rejected(code, err, f"{parent} is not writable", workdir, parent / "out")


def test_unwritable_outputs_dir_simulated(tmp_path, workdir, capsys, monkeypatch):
    parent = tmp_path / "read_only"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr("common.plan_checks.os.access",
                        lambda path, mode: False if Path(path) == parent else real_access(path, mode))
    code, err = run_runner(tmp_path, toy_plan(parent / "out"), capsys)
    assert_rejected(code, err, f"{parent} is not writable; choose a directory you can write to", workdir,
                    parent / "out")


def test_all_problems_of_all_runs_in_one_pass(tmp_path, workdir, capsys):
    outputs = tmp_path / "out"
    plan = {"name": "p", "gpu_ids_pool": [0], "configurations": [
        {"base_config": {"experiment_name": "a", "outputs_dir": str(outputs), "steps": 0}},
        {"base_config": {"experiment_name": "b", "outputs_dir": str(outputs), "random_seed": 2**33}},
        {"base_config": {"experiment_name": "c", "outputs_dir": str(outputs), "learning_rate": 0.1}},
    ]}
    code, err = run_runner(tmp_path, plan, capsys)
    assert_rejected(code, err, "(3 problem(s))", workdir, outputs)
    assert "steps must be >= 1" in err and "'random_seed' must be in" in err and "did you mean 'lr'" in err


def test_valid_plan_still_loads(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(toy_plan(tmp_path / "out", base={"lr": 0.5})))
    assert load_plan(path, ToyConfig).runs[0].config.lr == 0.5


def preference_plan(tmp_path: Path, **fields) -> dict:
    dataset = tmp_path / "prefs.jsonl"
    dataset.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    base = {"experiment_name": "sim", "outputs_dir": str(tmp_path / "out"), "model": "tiny-gpt2",
            "dataset": str(dataset), "dataset_format": "prompt_chosen_rejected", **fields}
    return {"name": "p", "configurations": [{"base_config": base}]}


def test_missing_input_files_of_all_runs_named_with_the_command_that_makes_them(tmp_path, workdir, capsys):
    from preference_similarity.experiment import FAMILY

    plan = preference_plan(tmp_path, similarity_results_path="ches/results_samples.pt", preference_num_samples=2,
                           eval_dataset="held_out.jsonl")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert main(FAMILY, ["--plan_config_path", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(2 problem(s))" in err
    assert "field 'similarity_results_path': 'ches/results_samples.pt' not found" in err
    assert "make it with `python compute_preference_similarity_per_example.py" in err
    assert "field 'eval_dataset': 'held_out.jsonl' not found" in err
    assert list(workdir.iterdir()) == [] and not (tmp_path / "out").exists()


def test_inputs_made_by_a_run_of_the_plan_are_not_required_to_exist(tmp_path):
    from preference_training.config import PreferenceTrainingConfig

    plan = preference_plan(tmp_path, save_model=True)
    chained = dict(plan["configurations"][0]["base_config"], experiment_name="after",
                   load_model_checkpoint="{run:sim}/model")
    plan["configurations"].append({"base_config": chained})
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert [spec.name for spec in load_plan(path, PreferenceTrainingConfig).runs] == ["sim", "after"]
    plan["skip"] = 1  # the producing run is skipped (assumed done earlier): now its output must exist
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanError, match=r"field 'load_model_checkpoint': '.*/out/sim/model' not found .*save_model"):
        load_plan(path, PreferenceTrainingConfig)


def test_failed_run_prints_one_error_line_and_keeps_the_traceback_in_run_log(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(toy_plan(tmp_path / "out", base={"fail": True})))
    command = ("from common.runner import main; from tests.toy_family import TOY_FAMILY; "
               "raise SystemExit(main(TOY_FAMILY))")
    result = subprocess.run([sys.executable, "-c", command, "--plan_config_path", str(path)], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: 1 run(s) failed, first x: RuntimeError: toy failure requested "
                           f"(traceback in {tmp_path / 'out' / 'x'}/run.log)"]
    assert "Traceback" in (tmp_path / "out" / "x" / "run.log").read_text()
    assert "Traceback" in read_json(tmp_path / "out" / "x" / "status.json")["traceback"]


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    from common.plan_json import read_plan_json

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "p", "description": "[" * 200 + '\\"{' * 100, "configurations": []}))
    raw, problems = read_plan_json(path)
    assert problems == [] and raw["description"].startswith("[[[")
