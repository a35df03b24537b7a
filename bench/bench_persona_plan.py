"""Benchmark (issue 7, item 3): a persona plan of single-token DPO runs vs the bare training steps it contains.

    python bench/bench_persona_plan.py            # 10 runs x 100 steps (the issue's size)
    python bench/bench_persona_plan.py --quick    # 4 runs x 30 steps
    python bench/bench_persona_plan.py --num_runs 4 --steps 30

One process measures both, on `smollm2-135m-instruct` (fp32, CPU):
  * the plan: `--num_runs` DPO runs (one persona prompt each, y+ "Yes", y- "No", beta 0.1, RMSprop lr 1e-7,
    `--steps` full-batch steps, every other field at its default: tracker, top-token records every 10 steps,
    metric plots, tensors.safetensors) executed by `common.runner.main` exactly as
    `persona_single_example_experiment_plan_runner.py` would, timed from start to end (plan wall time);
  * the bare loop "most code" would write, on the same prompts: a plain full forward (logits for the whole
    sequence), log-softmax at the last position, the DPO loss against reference log-probs computed once, backward,
    RMSprop step. Only these steps are timed (their sum is the "bare" time); the model is loaded with plain
    `from_pretrained` outside the timing. Half the prompts are run before the plan and half after it, so a change of
    machine load during the benchmark hits both sides alike.
Reported: our per-step time (training step + tracker) vs the bare step, the plan's overhead outside its steps
(model loading, reference pass, setup, writing files and plots) as a share of the plan wall time, and how many
times the weights were read from disk during the plan (counted at `common.models._read_model`; the in-process
cache is cleared first). The results are printed and written to the `persona_plan` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import (  # noqa: E402
    THREADS_HELP, machine_lines, markdown_table, median, set_threads, spread, update_results_section,
)

# The paper's ten prompt seeds (Razin et al. 2025 persona plans); more runs reuse them shifted by 1.
PAPER_SEEDS = (9773, 5290, 8767, 9818, 7596, 344, 2701, 3298, 7834, 6327)
TARGET_STEP_RATIO, TARGET_OVERHEAD = 1.0, 0.05
BETA, LR = 0.1, 1e-7


def prompt_seeds(num_runs: int) -> list[int]:
    return [PAPER_SEEDS[i % len(PAPER_SEEDS)] + i // len(PAPER_SEEDS) for i in range(num_runs)]


def write_plan(path: Path, outputs_dir: Path, model: str, dataset: str, seeds: list[int], steps: int) -> None:
    """The benchmark plan: one DPO run per prompt seed; everything else at PersonaConfig's defaults."""
    plan = {
        "name": "bench_persona_plan",
        "description": f"{len(seeds)} single-token DPO runs x {steps} steps (bench/bench_persona_plan.py)",
        "configurations": [{
            "base_config": {
                "experiment_name": "dpo_s{train_samples_random_seed}", "outputs_dir": str(outputs_dir),
                "model": model, "dataset": dataset, "num_train_samples": 1,
                "answer_matching_behavior_to_use": "Yes", "output_tokens_matching_yes": ["Yes"],
                "output_tokens_matching_no": ["No"], "objective": "dpo", "kl_coeff": BETA, "lr": LR,
                "optimizer": "rmsprop", "epochs": steps, "device": "cpu",
            },
            "options": {"train_samples_random_seed": seeds},
        }],
    }
    path.write_text(json.dumps(plan, indent=2))


def persona_prompt(tokenizer, dataset: str, seed: int):
    """The (1, L) prompt ids and the y+ / y- ids the plan's run with this seed trains on."""
    from persona_experiments.data import build_persona_batch, load_persona_examples, select_examples

    examples = select_examples(load_persona_examples(dataset), 1, "Yes", seed)
    batch = build_persona_batch(tokenizer, examples, ["Yes"], ["No"], seed)
    return batch.input_ids, batch.attention_mask, int(batch.preferred_ids[0]), int(batch.dispreferred_ids[0])


def bare_run_step_seconds(model, tokenizer, dataset: str, seed: int, steps: int) -> list[float]:
    """Per-step seconds of a plain DPO loop on one prompt (full forward; reference log-probs computed untimed)."""
    import torch
    import torch.nn.functional as F

    input_ids, attention_mask, chosen, rejected = persona_prompt(tokenizer, dataset, seed)
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits[0, -1].float().log_softmax(-1)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR)
    seconds = []
    for _ in range(steps):
        tick = time.perf_counter()
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (1, L, V): every position
        logprobs = logits[0, -1].float().log_softmax(-1)
        margin = (logprobs[chosen] - reference[chosen]) - (logprobs[rejected] - reference[rejected])
        loss = -F.logsigmoid(BETA * margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - tick)
    return seconds


def run_plan_counting_reads(plan_path: Path) -> tuple[float, int, int]:
    """(wall seconds, exit code, weight reads from disk) of `runner.main` on the plan, in this process."""
    import common.models as models
    from common.runner import main as runner_main
    from persona_experiments.trainer import FAMILY

    models.clear_model_cache()
    original, reads = models._read_model, []

    def counting_read_model(*args, **kwargs):
        reads.append(args[0])
        return original(*args, **kwargs)

    models._read_model = counting_read_model
    try:
        started = time.perf_counter()
        exit_code = runner_main(FAMILY, ["--plan_config_path", str(plan_path), "--rerun"])
        return time.perf_counter() - started, exit_code, len(reads)
    finally:
        models._read_model = original


def collect_run_times(outputs_dir: Path, seeds: list[int]) -> list[dict]:
    """Per run: summary timings, runner-measured run seconds, and the per-step seconds from metrics.jsonl."""
    runs = []
    for seed in seeds:
        run_dir = outputs_dir / f"dpo_s{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        status = json.loads((run_dir / "status.json").read_text())
        with (run_dir / "metrics.jsonl").open() as f:
            step_seconds = [r["time/step_seconds"] for r in map(json.loads, f) if "time/step_seconds" in r]
        runs.append({"steps": summary["num_steps"], "step_mean": summary["seconds_per_step_mean"],
                     "tracker_mean": summary["tracker_seconds_per_step_mean"], "setup": summary["setup_seconds"],
                     "run_total": summary["total_seconds"], "runner_seconds": status["seconds"],
                     "step_seconds": step_seconds})
    return runs


def report(args, plan_wall: float, exit_code: int, reads: int, runs: list[dict], bare: list[float]) -> str:
    """The markdown section: per-step comparison, overhead breakdown, targets."""
    total_steps = sum(r["steps"] for r in runs)
    ours_steps = sum(r["steps"] * r["step_mean"] for r in runs)
    ours_tracker = sum(r["steps"] * r["tracker_mean"] for r in runs)
    setup = sum(r["setup"] for r in runs)
    in_run_rest = sum(r["run_total"] - r["setup"] for r in runs) - ours_steps - ours_tracker  # final point, outputs
    runner_rest = sum(r["runner_seconds"] - r["run_total"] for r in runs)  # run dir, config, plots, summary
    plan_rest = plan_wall - sum(r["runner_seconds"] for r in runs)  # plan validation, plan files, table
    overhead = plan_wall - ours_steps - ours_tracker
    bare_sum = sum(bare)
    our_step_median = median([s for r in runs for s in r["step_seconds"]])
    step_ratio_mean = (ours_steps + ours_tracker) / total_steps / (bare_sum / len(bare))
    step_ratio_median = (our_step_median + ours_tracker / total_steps) / median(bare)
    rows = [
        ["bare step (full forward + backward + RMSprop)", spread(bare, 3), f"{bare_sum / len(bare):.3f}", f"{bare_sum:.1f}"],
        ["ours: training step", spread([s for r in runs for s in r["step_seconds"]], 3), f"{ours_steps / total_steps:.3f}",
         f"{ours_steps:.1f}"],
        ["ours: tracker/recording per step", "", f"{ours_tracker / total_steps:.3f}", f"{ours_tracker:.1f}"],
        ["ours: plan wall time", "", f"{plan_wall / total_steps:.3f}", f"{plan_wall:.1f}"],
    ]
    lines = ["## 3. Persona plan vs bare training steps (`bench/bench_persona_plan.py`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    lines += [f"- setting: {args.num_runs} single-token DPO runs x {args.steps} steps ({total_steps} steps), "
              f"{args.model} fp32 on CPU, one persona prompt per run (paper seeds), beta {BETA}, RMSprop lr {LR}, all "
              f"other persona fields at their defaults; bare loop over the same prompts and steps in the same process"
              + ("" if (args.num_runs, args.steps) == (10, 100) else " (scaled down from the issue's 10 x 100)"),
              f"- plan exit code {exit_code}; model weights read from disk during the plan: **{reads}** time(s) "
              f"(target: once per plan)", ""]
    lines.append(markdown_table(["what", "per step s, median (min-max, n)", "per step s, mean", "total s"], rows))
    lines += ["", "Overhead of the plan outside the timed steps and tracker:", "",
              markdown_table(["part", "s", "share of plan wall time"], [
                  ["run setup (model copy/read, data, reference pass, recorder)", f"{setup:.1f}", f"{setup / plan_wall:.1%}"],
                  ["in-run rest (final point, geometry, tensors.safetensors, summary)", f"{in_run_rest:.1f}",
                   f"{in_run_rest / plan_wall:.1%}"],
                  ["runner per run (run dir, config/status, metrics close, plots)", f"{runner_rest:.1f}",
                   f"{runner_rest / plan_wall:.1%}"],
                  ["plan level (validation, plan log/status, table)", f"{plan_rest:.1f}", f"{plan_rest / plan_wall:.1%}"],
                  ["**total overhead**", f"{overhead:.1f}", f"**{overhead / plan_wall:.1%}**"]]), ""]
    lines += [f"- our per-step time incl. tracker / bare step: **{step_ratio_mean:.2f}x** by means, "
              f"{step_ratio_median:.2f}x by medians (target <= {TARGET_STEP_RATIO}: "
              f"{'met' if step_ratio_mean <= TARGET_STEP_RATIO else 'MISSED'})",
              f"- per-plan overhead: **{overhead / plan_wall:.1%}** of the plan wall time (target <= {TARGET_OVERHEAD:.0%}: "
              f"{'met' if overhead / plan_wall <= TARGET_OVERHEAD else 'MISSED'})",
              f"- plan wall time / sum of bare steps: **{plan_wall / bare_sum:.2f}x**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="../shared/data/persona/ends-justify-means.jsonl")
    parser.add_argument("--num_runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--outputs_dir", default=None, help="where the plan's runs go (default: a temporary dir)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true", help="4 runs x 30 steps")
    parser.add_argument("--no_write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.num_runs, args.steps = 4, 30
    set_threads(args.threads)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.models import SMOLLM2, smollm2_dir

    seeds = prompt_seeds(args.num_runs)
    location = str(smollm2_dir()) if args.model == SMOLLM2 else args.model
    tokenizer = AutoTokenizer.from_pretrained(location)
    bare_model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    bare_model.eval()  # no dropout, as in our runs
    half = len(seeds) // 2
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_persona_") as tmp:
        outputs_dir = Path(args.outputs_dir or tmp)
        plan_path = Path(tmp) / "plan.json"
        write_plan(plan_path, outputs_dir, args.model, args.dataset, seeds, args.steps)
        for seed in seeds[:half]:
            bare += bare_run_step_seconds(bare_model, tokenizer, args.dataset, seed, args.steps)
        print(f"bare loop, first {half} prompts: median step {median(bare):.3f} s", flush=True)
        plan_wall, exit_code, reads = run_plan_counting_reads(plan_path)
        print(f"plan: {plan_wall:.1f} s, exit code {exit_code}, weights read from disk {reads} time(s)", flush=True)
        for seed in seeds[half:]:
            bare += bare_run_step_seconds(bare_model, tokenizer, args.dataset, seed, args.steps)
        runs = collect_run_times(outputs_dir, seeds)
    text = report(args, plan_wall, exit_code, reads, runs, bare)
    print(text)
    if not args.no_write:
        update_results_section("persona_plan", text)


if __name__ == "__main__":
    main()
