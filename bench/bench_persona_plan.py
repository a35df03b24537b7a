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
    RMSprop step. Only these steps are timed (their sum is the "bare" time); the model is loaded outside the timing.
    Half the prompts are run before the plan and half after it, so a change of machine load during the benchmark
    hits both sides alike.
Times are wall seconds and process CPU seconds (one thread: CPU seconds do not depend on how much of the machine
other jobs take). Our step times are the gaps between consecutive step logs of a run (a bench-only wrapper around
`MetricsLogger.log` timestamps them), so they include the tracker and the metrics line.
Reported: our per-step time (training step + tracker) vs the bare step, the plan's overhead outside its steps
(model loading, reference pass, setup, writing files and plots) as a share of the plan wall time, and how many
times the weights were read from disk during the plan (counted at `common.models._read_model`; the in-process
cache is cleared first). The results are printed and written to the `persona_plan` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import (  # noqa: E402
    THREADS_HELP, machine_lines, markdown_table, median, set_threads, spread, sync_ches_section,
    update_results_section,
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
                "optimizer": "rmsprop", "epochs": steps, "device": "cpu", "train_samples_random_seed": seeds[0],
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


def bare_run_step_times(model, tokenizer, dataset: str, seed: int, steps: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step of a plain DPO loop on one prompt (full forward; reference untimed)."""
    import torch
    import torch.nn.functional as F

    input_ids, attention_mask, chosen, rejected = persona_prompt(tokenizer, dataset, seed)
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits[0, -1].float().log_softmax(-1)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR)
    times = []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (1, L, V): every position
        logprobs = logits[0, -1].float().log_softmax(-1)
        margin = (logprobs[chosen] - reference[chosen]) - (logprobs[rejected] - reference[rejected])
        loss = -F.logsigmoid(BETA * margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


@contextlib.contextmanager
def instrumented_plan_process():
    """Count weight reads from disk (`common.models._read_model`, cache cleared first) and timestamp every
    `MetricsLogger.log` call (wall, CPU) per metrics file, for the duration of the block."""
    import common.metrics_logger as metrics_logger
    import common.models as models

    models.clear_model_cache()
    reads: list[str] = []
    stamps: dict[str, list[tuple[float, float]]] = {}
    read_model, log = models._read_model, metrics_logger.MetricsLogger.log

    def counting_read_model(*args, **kwargs):
        reads.append(str(args[0]))
        return read_model(*args, **kwargs)

    def timed_log(self, step, **scalars):
        log(self, step, **scalars)
        stamps.setdefault(str(self.path), []).append((time.perf_counter(), time.process_time()))

    models._read_model, metrics_logger.MetricsLogger.log = counting_read_model, timed_log
    try:
        yield reads, stamps
    finally:
        models._read_model, metrics_logger.MetricsLogger.log = read_model, log


def run_plan(plan_path: Path) -> dict:
    """Run the plan with `common.runner.main` in this process; wall/CPU totals, exit code, reads, log stamps."""
    from common.runner import main as runner_main
    from persona_experiments.trainer import FAMILY

    with instrumented_plan_process() as (reads, stamps):
        wall, cpu = time.perf_counter(), time.process_time()
        exit_code = runner_main(FAMILY, ["--plan_config_path", str(plan_path), "--rerun"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "exit_code": exit_code, "reads": len(reads), "stamps": stamps}


def step_times_from_stamps(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) of steps 1..N-1 of one run: gaps between consecutive step logs (step + tracker + logging).

    A run logs once after each of its N steps and once more for the final point; the gap before the first log
    holds the setup and the gap before the last one the final point, so both are left out."""
    steps = stamps[:-1]
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(steps, steps[1:])]


def collect_runs(outputs_dir: Path, seeds: list[int], stamps: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """Per run: the timings of status.json, the runner's run seconds, and the per-step (wall, CPU) times from the log stamps."""
    runs = []
    for seed in seeds:
        run_dir = outputs_dir / f"dpo_s{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        status = json.loads((run_dir / "status.json").read_text())
        timings = status["timings"]
        runs.append({"steps": summary["num_steps"], "setup": timings["setup_seconds"],
                     "run_total": timings["total_seconds"], "runner_seconds": status["seconds"],
                     "step_mean": timings["seconds_per_step_mean"], "tracker_mean": timings["tracker_seconds_per_step_mean"],
                     "step_times": step_times_from_stamps(stamps[str(run_dir / "metrics.jsonl")])})
    return runs


def report(args, plan: dict, runs: list[dict], bare: list[tuple[float, float]]) -> str:
    """The markdown section: per-step comparison (wall and CPU), overhead breakdown, targets."""
    total_steps = sum(r["steps"] for r in runs)
    ours = [t for r in runs for t in r["step_times"]]
    ours_wall, ours_cpu = [w for w, _ in ours], [c for _, c in ours]
    bare_wall, bare_cpu = [w for w, _ in bare], [c for _, c in bare]
    # Time of all training steps incl. tracker: each run's mean measured step x its step count.
    steps_wall = sum(r["steps"] * sum(w for w, _ in r["step_times"]) / len(r["step_times"]) for r in runs)
    steps_cpu = sum(r["steps"] * sum(c for _, c in r["step_times"]) / len(r["step_times"]) for r in runs)
    overhead_wall, overhead_cpu = plan["wall"] - steps_wall, plan["cpu"] - steps_cpu
    setup = sum(r["setup"] for r in runs)
    in_run_rest = sum(r["run_total"] - r["setup"] - r["steps"] * (r["step_mean"] + r["tracker_mean"]) for r in runs)
    runner_rest = sum(r["runner_seconds"] - r["run_total"] for r in runs)  # run dir, config, metrics close, plots
    plan_rest = plan["wall"] - sum(r["runner_seconds"] for r in runs)   # plan validation, plan files, table
    step_ratio_wall, step_ratio_cpu = median(ours_wall) / median(bare_wall), median(ours_cpu) / median(bare_cpu)
    rows = [
        ["bare step (full forward + backward + RMSprop)", spread(bare_wall, 3), spread(bare_cpu, 3),
         f"{sum(bare_wall):.1f}", f"{sum(bare_cpu):.1f}"],
        ["ours: step incl. tracker and logging", spread(ours_wall, 3), spread(ours_cpu, 3), f"{steps_wall:.1f}",
         f"{steps_cpu:.1f}"],
        ["ours: whole plan", "", "", f"{plan['wall']:.1f}", f"{plan['cpu']:.1f}"],
    ]
    breakdown = [
        ["run setup (model copy/read, data, reference pass, recorder)", f"{setup:.1f}", f"{setup / plan['wall']:.1%}"],
        ["in-run rest (final point, geometry, tensors.safetensors, summary)", f"{in_run_rest:.1f}",
         f"{in_run_rest / plan['wall']:.1%}"],
        ["runner per run (run dir, config/status, metrics close, plots)", f"{runner_rest:.1f}",
         f"{runner_rest / plan['wall']:.1%}"],
        ["plan level (validation, plan log/status, table)", f"{plan_rest:.1f}", f"{plan_rest / plan['wall']:.1%}"],
    ]
    lines = ["## 3. Persona plan vs bare training steps (`bench/bench_persona_plan.py`)", ""]
    lines += machine_lines(sys.argv, args.threads)
    lines += [f"- setting: {args.num_runs} single-token DPO runs x {args.steps} steps ({total_steps} steps), "
              f"{args.model} fp32 on CPU, one persona prompt per run (paper seeds), beta {BETA}, RMSprop lr {LR}, all "
              f"other persona fields at their defaults; the bare loop runs the same prompts and steps in the same "
              f"process, half before and half after the plan"
              + ("" if (args.num_runs, args.steps) == (10, 100) else " (scaled down from the issue's 10 x 100)"),
              f"- plan exit code {plan['exit_code']}; model weights read from disk during the plan: **{plan['reads']}** "
              f"time(s) (target: once per plan)",
              "- our step times are the gaps between consecutive step logs of a run (steps 1..N-1: training step, "
              "tracker, top-token records, metrics line); totals scale each run's mean to its N steps", ""]
    lines.append(markdown_table(["what", "wall s/step median (min-max, n)", "CPU s/step median (min-max, n)",
                                 "total wall s", "total CPU s"], rows))
    lines += ["", "Where the plan's wall time outside the steps went (from each run's summary and status):", "",
              markdown_table(["part", "wall s", "share of plan wall time"], breakdown), ""]
    lines += [f"- our step incl. tracker / bare step (medians): **{step_ratio_wall:.2f}x** wall, **{step_ratio_cpu:.2f}x** "
              f"CPU (target <= {TARGET_STEP_RATIO}: {'met' if max(step_ratio_wall, step_ratio_cpu) <= TARGET_STEP_RATIO else 'MISSED'})",
              f"- per-plan overhead (plan time outside the steps): **{overhead_wall / plan['wall']:.1%}** of the wall time, "
              f"{overhead_cpu / plan['cpu']:.1%} of the CPU time (target <= {TARGET_OVERHEAD:.0%}: "
              f"{'met' if overhead_wall / plan['wall'] <= TARGET_OVERHEAD else 'MISSED'})",
              f"- whole plan / sum of bare steps: **{plan['wall'] / sum(bare_wall):.2f}x** wall, "
              f"{plan['cpu'] / sum(bare_cpu):.2f}x CPU"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="data_files/persona/ends-justify-means.jsonl")
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
    from common.models import load_model_and_tokenizer

    seeds = prompt_seeds(args.num_runs)
    bare_model, tokenizer = load_model_and_tokenizer(args.model)  # the plan starts with the in-process cache cleared
    bare_model.eval()  # no dropout, as in our runs
    half = (len(seeds) + 1) // 2
    bare: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench_persona_") as tmp:
        outputs_dir = Path(args.outputs_dir or tmp)
        plan_path = Path(tmp) / "plan.json"
        write_plan(plan_path, outputs_dir, args.model, args.dataset, seeds, args.steps)
        for seed in seeds[:half]:
            bare += bare_run_step_times(bare_model, tokenizer, args.dataset, seed, args.steps)
        print(f"bare loop, first {half} prompts: median step {median([w for w, _ in bare]):.3f} s", flush=True)
        plan = run_plan(plan_path)
        print(f"plan: {plan['wall']:.1f} s, exit code {plan['exit_code']}, weights read from disk {plan['reads']} "
              "time(s)", flush=True)
        if plan["exit_code"] != 0:
            raise SystemExit(f"the benchmark plan failed (runner exit code {plan['exit_code']}); see the log above")
        for seed in seeds[half:]:
            bare += bare_run_step_times(bare_model, tokenizer, args.dataset, seed, args.steps)
        runs = collect_runs(outputs_dir, seeds, plan["stamps"])
    text = report(args, plan, runs, bare)
    print(text)
    if not args.no_write:
        update_results_section("persona_plan", text)
        sync_ches_section()


if __name__ == "__main__":
    main()
