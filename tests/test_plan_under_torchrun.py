"""A dataset-level plan launched with `torchrun --nproc_per_node 2` (DDP over gloo on CPU, through accelerate)
gives the loss trajectory of the same plan in one process (to 1e-5), and only the main process writes files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.io_utils import read_json, read_jsonl
from common.runner import main
from preference_similarity.experiment import FAMILY
from tests.conftest import real_data

ROOT = Path(__file__).resolve().parents[1]


def write_plan(outputs_dir: Path) -> Path:
    train, held_out = real_data("ultrafeedback/train_1000.jsonl"), real_data("ultrafeedback/eval_200.jsonl")
    base = {
        "experiment_name": "ddp_check", "outputs_dir": str(outputs_dir), "model": "tiny-gpt2",
        "dataset": str(train), "dataset_format": "ultrafeedback", "num_train_samples": 4,
        "max_input_length": 32, "truncation": "keep_response", "eval_dataset": str(held_out), "num_eval_samples": 2,
        "objective": "dpo", "kl_coeff": 0.1, "optimizer": "adam", "lr": 1e-3, "batch_size": 4, "epochs": 3,
        "random_seed": 0, "save_metric_plots": False,
    }
    outputs_dir.mkdir(parents=True)
    path = outputs_dir / "plan.json"
    path.write_text(json.dumps({"name": "ddp", "configurations": [{"base_config": base}]}))
    return path


def test_plan_under_torchrun_matches_one_process(tmp_path):
    assert main(FAMILY, ["--plan_config_path", str(write_plan(tmp_path / "single"))]) == 0
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "preference_similarity_experiment_plan_runner.py", "--plan_config_path", str(write_plan(tmp_path / "ddp"))],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    single_losses = [r["loss"] for r in read_jsonl(tmp_path / "single" / "ddp_check" / "metrics.jsonl") if "loss" in r]
    ddp_losses = [r["loss"] for r in read_jsonl(tmp_path / "ddp" / "ddp_check" / "metrics.jsonl") if "loss" in r]
    assert len(single_losses) == len(ddp_losses) == 3  # one line per step, written once (by rank 0 only)
    assert ddp_losses == pytest.approx(single_losses, abs=1e-5)
    assert read_json(tmp_path / "ddp" / "ddp_check" / "status.json")["status"] == "done"
    assert (tmp_path / "ddp" / "ddp_check" / "run.rank1.log").exists()
    assert len(list((tmp_path / "ddp").glob("*.plan_status.json"))) == 1
