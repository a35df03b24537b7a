"""Worker for tests/test_preference_trainer.py::test_two_processes_match_one_process.

    python tests/preference_ddp_worker.py OUT_DIR                                 # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/preference_ddp_worker.py OUT_DIR   # DDP (gloo)

Trains tiny-gpt2 on 8 UltraFeedback pairs (batch 4, 2 epochs) and writes OUT_DIR/losses.json (rank 0 only):
{"world_size", "losses" (per step), "final_preferred_change"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import RunContext  # noqa: E402
from common.distributed import is_main_process  # noqa: E402
from common.metrics_logger import MetricsLogger  # noqa: E402
from preference_training.config import PreferenceTrainingConfig  # noqa: E402
from preference_training.selection import select_examples  # noqa: E402
from preference_training.trainer import train_preference_model  # noqa: E402

# Conventional names, resolved by the data-location rule (data_files/, then $LD_DATA_DIR, which torchrun passes on).
TRAIN_DATASET, EVAL_DATASET = "data_files/ultrafeedback/train_1000.jsonl", "data_files/ultrafeedback/eval_200.jsonl"


class NullSink:
    def log(self, step: int, **scalars) -> None:
        raise AssertionError("only the main process may log")


def run_worker(out_dir: Path) -> None:
    """Train (in this process, or as one rank of a launch) and write OUT_DIR/losses.json on rank 0."""
    is_main = is_main_process()
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    config = PreferenceTrainingConfig(
        model="tiny-gpt2", dataset=TRAIN_DATASET, eval_dataset=EVAL_DATASET,
        num_train_samples=8, num_eval_samples=2, max_input_length=32, batch_size=4, epochs=2, optimizer="adam",
        truncation="keep_response", lr=1e-3, outputs_dir=str(out_dir), random_seed=0)
    selected = select_examples(config)
    logger = MetricsLogger(out_dir) if is_main else NullSink()
    result = train_preference_model(config, selected.train, selected.eval,
                                    RunContext(out_dir, torch.device("cpu"), logger, config.random_seed))
    if is_main:
        logger.close()
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        (out_dir / "losses.json").write_text(json.dumps({
            "world_size": result.summary["world_size"],
            "losses": [r["loss"] for r in records if "loss" in r],
            "final_preferred_change": result.summary["eval_metrics/train/preferred_logprobs_change_mean"],
        }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_worker(Path(sys.argv[1]))
