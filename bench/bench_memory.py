"""Benchmark (issue 7, item 4): peak resident memory of a persona run and of a dataset-level run vs the model's size.

    python bench/bench_memory.py             # persona run of 10 steps, dataset-level run of 2 steps
    python bench/bench_memory.py --quick     # the same (it is already small); kept for a uniform interface

Each measurement runs in its own subprocess and reports its peak RSS (`getrusage` ru_maxrss); memory peaks during
the first training step, so a few steps suffice. Workers:
    floor          python + torch + transformers + our trainer modules imported, no model: the fixed cost.
    loaded         + the model loaded through `common.models.load_model_and_tokenizer` (which also keeps the pristine
                   weights cached in-process so a plan reads them from disk once: two copies).
    persona_run    one persona DPO run (one prompt, `--persona_steps` steps, defaults otherwise) through the plan
                   runner, exactly as `persona_single_example_experiment_plan_runner.py` runs it.
    dataset_run    our dataset-level trainer on 8 UltraFeedback pairs truncated to 256 tokens, batch 8, Adam
                   (`bench/bench_dpo_step.py`'s `ours` worker, `--dataset_steps` steps).
Model size = parameters x 4 bytes (fp32). Written to the `memory` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import (  # noqa: E402
    THREADS_HELP, gib, machine_lines, markdown_table, run_worker, sync_ches_section, update_results_section,
    worker_main,
)


def _import_stack() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import preference_training.trainer  # noqa: F401
    import common.runner  # noqa: F401
    import persona_experiments.trainer  # noqa: F401


def floor_worker() -> dict:
    _import_stack()
    return {}


def loaded_worker(model: str) -> dict:
    _import_stack()
    from common.models import load_model_and_tokenizer

    net, _ = load_model_and_tokenizer(model)
    return {"model_bytes": sum(p.numel() for p in net.parameters()) * 4}


def persona_run_worker(model: str, dataset: str, steps: int) -> dict:
    from bench.bench_persona_plan import prompt_seeds, write_plan
    from common.runner import main as runner_main
    from persona_experiments.trainer import FAMILY

    with tempfile.TemporaryDirectory(prefix="bench_memory_persona_") as tmp:
        plan_path = Path(tmp) / "plan.json"
        write_plan(plan_path, Path(tmp) / "outputs", model, dataset, prompt_seeds(1), steps)
        exit_code = runner_main(FAMILY, ["--plan_config_path", str(plan_path)])
    if exit_code != 0:
        raise RuntimeError(f"persona run failed (runner exit code {exit_code})")
    return {}


def dataset_run_worker(model: str, dataset: str, steps: int) -> dict:
    from bench.bench_dpo_step import ours_worker

    return ours_worker(model=model, dataset=dataset, num_pairs=8, seed=0, max_length=256, steps=steps, lr=1e-6,
                       beta=0.1, optimizer="adam")


WORKERS = {"floor": floor_worker, "loaded": loaded_worker, "persona_run": persona_run_worker,
           "dataset_run": dataset_run_worker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--persona_dataset", default="data_files/persona/ends-justify-means.jsonl")
    parser.add_argument("--dpo_dataset", default="data_files/ultrafeedback/train_1000.jsonl")
    parser.add_argument("--persona_steps", type=int, default=10)
    parser.add_argument("--dataset_steps", type=int, default=2,
                        help="steps of the dataset-level run (>= 2: the optimizer state exists from the 2nd backward on)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true", help="no change (already small)")
    parser.add_argument("--no_write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    script = Path(__file__)
    results = {
        "floor": run_worker(script, "floor", {}, args.threads),
        "loaded": run_worker(script, "loaded", {"model": args.model}, args.threads),
        "persona_run": run_worker(script, "persona_run", {"model": args.model, "dataset": args.persona_dataset,
                                                          "steps": args.persona_steps}, args.threads),
        "dataset_run": run_worker(script, "dataset_run", {"model": args.model, "dataset": args.dpo_dataset,
                                                          "steps": args.dataset_steps}, args.threads),
    }
    model_bytes = results["loaded"]["model_bytes"]
    floor = results["floor"]["peak_rss_bytes"]
    descriptions = {
        "floor": "imports only (python, torch, transformers, our trainers), no model",
        "loaded": "model loaded with load_model_and_tokenizer (run copy + in-process pristine cache)",
        "persona_run": f"persona DPO run, 1 prompt, {args.persona_steps} steps, via the plan runner",
        "dataset_run": f"dataset-level DPO run, 8 pairs x 256 tokens, batch 8, Adam, {args.dataset_steps} step(s)",
    }
    rows = [[name, descriptions[name], gib(r["peak_rss_bytes"]), f"{r['peak_rss_bytes'] / model_bytes:.1f}x",
             f"{(r['peak_rss_bytes'] - floor) / model_bytes:.1f}x"] for name, r in results.items()]
    lines = ["## 4. Peak memory vs model size (`bench/bench_memory.py`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    lines += [f"- model: {args.model} fp32, {model_bytes / 4 / 1e6:.1f}M parameters = {gib(model_bytes)} GiB "
              "(parameters x 4 bytes); each row is its own process (peak RSS from getrusage)", ""]
    lines.append(markdown_table(["process", "what", "peak RSS GiB", "peak / model size", "(peak - floor) / model size"],
                                rows))
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        update_results_section("memory", text)
        sync_ches_section()


if __name__ == "__main__":
    worker_main(WORKERS) or main()
