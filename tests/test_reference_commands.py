"""The reference README's training commands, end to end on tiny-gpt2 with small local data written here:
`similarity_measures_experiment_runner.py`, `sorrybench_experiment_runner.py` and
`persona_single_example_accelerate_experiment_plan_runner.py` (same script names and flags as the reference)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import compute_preference_similarity_per_example as similarity_script
import similarity_measures_experiment_runner as similarity_runner
import sorrybench_experiment_runner as sorrybench_runner
from common.io_utils import read_json, read_jsonl
from common.single_run import run_dir_name
from sorrybench.experiment import SorryBenchConfig

ROOT = Path(__file__).resolve().parents[1]
TIME_PART = r"\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}-\d{1,4}"
CHANGE_KEY = "eval_metrics/train/preferred_logprobs_change_mean"
COMMON_FLAGS = ["--model", "tiny-gpt2", "--batch_size_per_gpu_proc", "2", "--gradient_accumulation_steps", "2",
                "--learning_rate", "1e-3", "--num_train_epochs", "1", "--eval_every_epochs", "1",
                "--save_every_epochs", "-1", "--kl_coeff", "0.1", "--seed", "-1"]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def preference_rows(n: int) -> list[dict]:
    return [{"prompt": f"Name a colour number {i}.", "chosen": f"Blue, colour {i}.",
             "rejected": f"I like trains {i} very much."} for i in range(n)]


def only_run_dir(parent: Path) -> Path:
    (run_dir,) = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_run_dir_name_format():
    moment = datetime.datetime(2025, 3, 4, 5, 6, 7)
    assert re.fullmatch(r"olmo_quantile_0\.5_2025_03_04-05_06_07-\d{1,4}", run_dir_name("olmo", 0.5, moment))
    assert re.fullmatch(r"sb_2025_03_04-05_06_07-\d{1,4}", run_dir_name("sb", None, moment))


def test_similarity_command_random_subset(workdir, capsys):
    dataset = write_jsonl(workdir / "prefs.jsonl", preference_rows(6))
    code = similarity_runner.main(["--run_name", "tiny", "--preference_dataset_path", str(dataset),
                                   "--dataset_format", "prompt_chosen_rejected", "--preference_num_samples", "4",
                                   "--wandb_project", "uf_dpo", "--num_proc", "2", "--gpu_id", "0",
                                   "--model_parallel_without_accelerate", *COMMON_FLAGS])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: --gpu_id 0 given but CUDA is not available: using the CPU" in err
    assert "ignored: --num_proc" in err and "--model_parallel_without_accelerate" in err
    run_dir = only_run_dir(workdir / "outputs" / "uf_dpo")
    assert re.fullmatch(rf"tiny_quantile_1\.0_{TIME_PART}", run_dir.name)
    evaluations = read_jsonl(run_dir / "eval_metrics.jsonl")
    assert [e["step"] for e in evaluations] == [0, 1]  # 4 pairs / (2 x 2) per step = 1 step
    assert evaluations[0][CHANGE_KEY] == 0.0 and evaluations[-1][CHANGE_KEY] != 0.0
    config = read_json(run_dir / "config.json")
    assert (config["batch_size"], config["gradient_accumulation"], config["num_train_samples"]) == (4, 2, 4)
    assert (config["lr"], config["epochs"], config["device"], config["wandb_project"]) == (1e-3, 1, "cpu", "uf_dpo")
    assert config["save_every_epochs"] == 0  # --save_every_epochs -1: off


def test_similarity_command_quantile_of_a_similarity_file(workdir):
    dataset = write_jsonl(workdir / "prefs.jsonl", preference_rows(6))
    similarity_file = similarity_script.main(["--model", "tiny-gpt2", "--dataset", str(dataset), "--dataset_format",
                                              "prompt_chosen_rejected", "--output_dir", str(workdir / "ches"),
                                              "--device", "cpu"])
    code = similarity_runner.main(["--run_name", "tiny", "--preference_dataset_path", str(dataset),
                                   "--dataset_format", "prompt_chosen_rejected",
                                   "--preference_similarity_path", str(similarity_file),
                                   "--use_samples_with_preference_similarity_quantile", "0.5",
                                   "--pref_similarity_measure", "ches_scores", "--preference_num_samples", "2",
                                   "--wandb_project", "uf_dpo", *COMMON_FLAGS[:2], "--batch_size_per_gpu_proc", "2",
                                   "--learning_rate", "1e-3"])
    assert code == 0
    run_dir = only_run_dir(workdir / "outputs" / "uf_dpo")
    assert re.fullmatch(rf"tiny_quantile_0\.5_{TIME_PART}", run_dir.name)
    config = read_json(run_dir / "config.json")
    assert (config["quantile"], config["preference_num_samples"]) == (0.5, 2)
    assert config["similarity_results_path"] == str(similarity_file)
    assert CHANGE_KEY in read_jsonl(run_dir / "eval_metrics.jsonl")[-1]


def test_similarity_command_bad_flags_exit_2_and_write_nothing(workdir, capsys):
    code = similarity_runner.main(["--preference_dataset_path", "missing.jsonl", "--learning_rate", "-1",
                                   "--model", "tiny-gpt2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid flags (2 problem(s))")
    assert "lr must be > 0, got -1.0 [flag --learning_rate]" in err
    assert "'missing.jsonl' not found" in err and "[flag --preference_dataset_path]" in err
    assert list(workdir.iterdir()) == []


def sorrybench_dataset(directory: Path) -> Path:
    rows = [{"query": f"How do I do harmful thing {i}?", "chosen": "I'm sorry, but I can't help with that.",
             "rejected": f"Sure, here is step {i}.", "category": str(i % 3 + 1),
             "gold_refusal": "No, I will not help with that.", "gold_non_refusal": f"Of course: step {i}."}
            for i in range(6)]
    write_jsonl(directory / "train.jsonl", rows[:4])
    write_jsonl(directory / "test.jsonl", rows[4:])
    return directory


def test_sorrybench_command(workdir):
    dataset_dir = sorrybench_dataset(workdir / "data_files" / "sorrybench" / "tiny")
    code = sorrybench_runner.main(["--run_name", "tiny", "--dataset_path", str(dataset_dir),
                                   "--wandb_project", "sorrybench_dpo", "--refusal_eval_batch_size", "4",
                                   "--refusal_max_new_tokens", "4", "--sft_coeff", "0", *COMMON_FLAGS])
    assert code == 0
    run_dir = only_run_dir(workdir / "outputs" / "sorrybench_dpo")
    assert re.fullmatch(rf"tiny_{TIME_PART}", run_dir.name)
    assert CHANGE_KEY in read_jsonl(run_dir / "eval_metrics.jsonl")[-1]
    assert (run_dir / "refusal_eval" / "refusal_rates.json").is_file()
    config = read_json(run_dir / "config.json")
    assert config["dataset"] == f"{dataset_dir}/train.jsonl" and config["eval_dataset"] == f"{dataset_dir}/test.jsonl"
    assert (config["refusal_generation_batch_size"], config["refusal_judge_batch_size"]) == (4, 4)
    assert (config["lr"], config["batch_size"], config["preference_num_samples"]) == (1e-3, 4, None)


@pytest.mark.parametrize("flag", ["--use_only_two_refusal_samples", "--use_only_one_of_each_samples"])
def test_sorrybench_unsupported_subset_flags_exit_2(workdir, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        sorrybench_runner.main(["--dataset_path", "x", flag])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {flag} is not supported")
    assert list(workdir.iterdir()) == []


def test_sorrybench_missing_dataset_names_the_command_that_makes_it(workdir, capsys):
    assert sorrybench_runner.main(["--dataset_path", "no_such_dir", "--model", "tiny-gpt2"]) == 2
    err = capsys.readouterr().err
    assert "'no_such_dir/train.jsonl' not found" in err and "sorrybench_create_preferences_dataset.py" in err
    assert "[flag --dataset_path]" in err


def test_accelerate_plan_runner_is_the_plain_runner_in_one_process(tmp_path):
    persona = write_jsonl(tmp_path / "persona.jsonl", [
        {"question": f"Is statement {i} true of you?", "answer_matching_behavior": " Yes" if i % 2 else " No",
         "answer_not_matching_behavior": " No" if i % 2 else " Yes"} for i in range(4)])
    plan = {"name": "tiny", "configurations": [{"base_config": {
        "experiment_name": "dpo_{train_samples_random_seed}", "outputs_dir": str(tmp_path / "out"),
        "model": "tiny-gpt2", "dataset": str(persona), "train_samples_random_seed": 1, "epochs": 2}, "options": {
        "train_samples_random_seed": [1, 2]}}]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    outputs = [subprocess.run([sys.executable, str(ROOT / script), "--plan_config_path", str(plan_path), "--dry_run"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
               for script in ("persona_single_example_accelerate_experiment_plan_runner.py",
                              "persona_single_example_experiment_plan_runner.py")]
    assert [o.returncode for o in outputs] == [0, 0]
    assert outputs[0].stdout == outputs[1].stdout
    assert "plan 'tiny': 2 run(s)" in outputs[0].stdout


@pytest.mark.skipif("use_gold_preferences" not in {f.name for f in dataclasses.fields(SorryBenchConfig)},
                    reason="SorryBenchConfig has no use_gold_preferences field on this branch")
def test_sorrybench_command_gold_preferences(workdir):
    dataset_dir = sorrybench_dataset(workdir / "gold_data")
    code = sorrybench_runner.main(["--run_name", "gold", "--dataset_path", str(dataset_dir), "--use_gold_preferences",
                                   "--refusal_max_new_tokens", "4", *COMMON_FLAGS])
    assert code == 0
    run_dir = only_run_dir(workdir / "outputs" / "sorrybench_dpo")
    assert read_json(run_dir / "config.json")["use_gold_preferences"] is True
    assert CHANGE_KEY in read_jsonl(run_dir / "eval_metrics.jsonl")[-1]


def test_similarity_command_save_every_epochs_writes_checkpoints(workdir):
    dataset = write_jsonl(workdir / "prefs.jsonl", preference_rows(4))
    flags = list(COMMON_FLAGS)
    flags[flags.index("--save_every_epochs") + 1] = "1"
    assert similarity_runner.main(["--run_name", "ckpt", "--preference_dataset_path", str(dataset),
                                   "--dataset_format", "prompt_chosen_rejected", "--preference_num_samples", "4",
                                   "--wandb_project", "uf_dpo", *flags]) == 0
    run_dir = only_run_dir(workdir / "outputs" / "uf_dpo")
    assert (run_dir / "checkpoints" / "epoch_1" / "config.json").is_file()
