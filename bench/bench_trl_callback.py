"""Benchmark (issue 17): overhead of the displacement callback inside TRL's DPOTrainer, as a share of the step time.

    python bench/bench_trl_callback.py                       # SmolLM2, N = 10, 32 probe pairs, 3 steps (slow on CPU)
    python bench/bench_trl_callback.py --model tiny-gpt2 --steps 2 --no_write      # a smoke run

Setting: `--model` (default smollm2-135m-instruct, fp32, CPU, `--threads` 1), TRL DPOTrainer with
`precompute_ref_log_probs=True`, fp32, no gradient checkpointing, `--batch_size` 8 training pairs per step (the
UltraFeedback rows drawn with `--seed`, as in bench_dpo_step.py), `--max_length` 256; the probe is `--probe_pairs` 32
other UltraFeedback rows, tokenised by the trainer (rows TRL drops for their prompt length are skipped), measured
every `--every_n_steps` N = 10 steps.
Timing: each training step from the trainer's `on_step_begin` to `on_step_end` (a timing callback that runs before
the displacement callback, so the probe measurement is not inside it), each probe measurement around
`DisplacementCallback.measure`, in wall and process CPU seconds (with one thread CPU seconds measure the work, whatever
else runs on the machine). Overhead = median measurement CPU time / (N x median step CPU time): the share of training
time the callback adds when it measures every N steps. Only `--steps` steps are run (a measurement happens at step 0
and at the last step), since the ratio needs one median of each, not N steps. Target: <= 10%.
Writes the `trl_callback` section of bench/RESULTS.md (unless `--no_write`).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import (  # noqa: E402
    THREADS_HELP, machine_lines, median, set_threads, spread, update_results_section,
)

TARGET_OVERHEAD = 0.10


def measure_overhead(args) -> dict:
    """Train `args.steps` DPO steps with the callback; returns step and measurement times (s) and the setting."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from common.data_locations import locate_data_file
    from common.models import load_model_and_tokenizer
    from integrations import track_displacement

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.seconds, self.cpu_seconds = (0.0, 0.0), [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.begin[0])
            self.cpu_seconds.append(time.process_time() - self.begin[1])

    rows = Dataset.from_json(str(locate_data_file(args.dataset))).select_columns(["prompt", "chosen", "rejected"])
    order = random.Random(args.seed).sample(range(len(rows)), len(rows))
    train = rows.select(order[:args.batch_size])
    model, tokenizer = load_model_and_tokenizer(args.model)
    timer = StepTimer()
    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_trl_callback_"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, max_length=args.max_length, learning_rate=1e-6,
                       precompute_ref_log_probs=True, bf16=False, gradient_checkpointing=False, use_cpu=True,
                       report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=args.seed)
    trainer = DPOTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer, callbacks=[timer])
    candidates = trainer._prepare_dataset(rows.select(order[args.batch_size:args.batch_size + 4 * args.probe_pairs]),
                                          tokenizer, config, "probe")
    probe = candidates.select(range(min(args.probe_pairs, len(candidates))))
    callback = track_displacement(trainer, probe, every_n_steps=args.every_n_steps, save_plots=False)
    measure_seconds, measure_cpu_seconds = [], []
    measure = callback.measure

    def timed_measure(*a, **kw):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = measure(*a, **kw)
        measure_seconds.append(time.perf_counter() - started)
        measure_cpu_seconds.append(time.process_time() - started_cpu)
        return result

    callback.measure = timed_measure
    trainer.train()
    probe_tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in callback.pairs)
    return {"step_seconds": timer.seconds, "measure_seconds": measure_seconds, "step_cpu_seconds": timer.cpu_seconds,
            "measure_cpu_seconds": measure_cpu_seconds, "num_probe": len(callback.pairs),
            "probe_tokens": probe_tokens, "num_train": len(trainer.train_dataset)}


def report(args, result: dict) -> str:
    overhead = median(result["measure_cpu_seconds"]) / (args.every_n_steps * median(result["step_cpu_seconds"]))
    wall_overhead = median(result["measure_seconds"]) / (args.every_n_steps * median(result["step_seconds"]))
    lines = ["## 6. Displacement callback overhead in TRL's DPOTrainer (`bench/bench_trl_callback.py`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    lines += [f"- setting: {args.model} fp32 on CPU, DPOTrainer (precomputed reference log-probs, fp32, no gradient "
              f"checkpointing), {result['num_train']} pairs per step (of {args.batch_size} drawn; TRL drops prompts "
              f"of >= max_length tokens), max_length {args.max_length}; probe "
              f"{result['num_probe']} pairs ({result['probe_tokens']} prompt + response tokens) every "
              f"{args.every_n_steps} steps", "",
              f"- training step: {spread(result['step_seconds'], 1)} wall s, {spread(result['step_cpu_seconds'], 1)} "
              f"CPU s; probe measurement: {spread(result['measure_seconds'], 1)} wall s, "
              f"{spread(result['measure_cpu_seconds'], 1)} CPU s",
              f"- overhead = measurement / ({args.every_n_steps} x step) = **{overhead:.1%}** in CPU seconds "
              f"({wall_overhead:.1%} wall; target <= {TARGET_OVERHEAD:.0%}: "
              f"{'met' if overhead <= TARGET_OVERHEAD else 'MISSED'})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="data_files/ultrafeedback/train_1000.jsonl",
                        help="found through common.data_locations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8, help="training pairs per step (= the data set)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--probe_pairs", type=int, default=32)
    parser.add_argument("--every_n_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="training steps actually run (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--no_write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    if min(args.steps, args.probe_pairs, args.every_n_steps, args.batch_size) < 1:
        parser.error("--steps, --probe_pairs, --every_n_steps and --batch_size must be >= 1")
    set_threads(args.threads)
    text = report(args, measure_overhead(args))
    print(text)
    if not args.no_write:
        update_results_section("trl_callback", text)
    return text


if __name__ == "__main__":
    main()
