"""Benchmark: CHES over UltraFeedback pairs, ours (`ches.ches.compute_pair_measures`) vs a plain batch-1 loop.

    python bench/bench_ches.py --num_pairs 150 --repetitions 3 --batch_sizes 1 8

The plain loop is what most code does: for each pair and each response, a full forward of prompt + response
through the causal LM with `output_hidden_states=True` (LM head included, prompt computed twice), then the
same sums and the same formulas (`ches.ches.reference_pair_summaries`). Ours calls the base transformer only,
once per batch of rows packed as [prompt | chosen | rejected] (prompt computed once, no padding between the
responses, batches sorted by length). Repetitions are interleaved (baseline and ours
alternate, order flipped every repetition) because the machine is shared; medians and the ratio
(baseline time / our time = our throughput gain) are reported and written to `--results_path`.
Scores must agree to `--rtol` (relative, per pair) or the script exits with an error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ches.ches import (  # noqa: E402
    MEASURE_NAMES, compute_pair_measures, measures_from_summaries, reference_pair_summaries,
)
from common.models import load_model_and_tokenizer  # noqa: E402
from common.preference_data import TokenizedPair, load_preference_examples, tokenize_pair  # noqa: E402


def plain_loop_measures(model: torch.nn.Module, pairs: list[TokenizedPair]) -> dict[str, list[float]]:
    """Batch-1 loop over `reference_pair_summaries` (full causal-LM forward with output_hidden_states, LM head
    included, prompt computed once per response), then the same formulas as ours."""
    per_pair = [measures_from_summaries(reference_pair_summaries(model, pair), [pair]) for pair in pairs]
    return {name: [measures[name][0] for measures in per_pair] for name in MEASURE_NAMES}


def max_relative_difference(ours: list[float], reference: list[float]) -> float:
    a, b = torch.tensor(ours, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return ((a - b).abs() / b.abs().clamp(min=1e-12)).max().item()


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="../shared/data/ultrafeedback/train_1000.jsonl")
    parser.add_argument("--num_pairs", type=int, default=150, help="seeded subsample of the data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_input_length", type=int, default=512)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="our batch sizes to time")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--results_path", default=str(Path(__file__).with_name("RESULTS_ches.md")))
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    examples = load_preference_examples(args.dataset, "ultrafeedback", num_samples=args.num_pairs, seed=args.seed)
    pairs = [p for p in (tokenize_pair(tokenizer, e, args.max_input_length) for e in examples)
             if not isinstance(p, str)]
    tokens_plain = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    tokens_ours = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    print(f"{len(pairs)} pairs, {tokens_plain} tokens forwarded by the plain loop, {tokens_ours} by ours")

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"plain": []} | {f"ours_bs{b}": [] for b in args.batch_sizes}
    outputs: dict[str, dict[str, list[float]]] = {}
    for repetition in range(args.repetitions):
        for name in (list(times) if repetition % 2 == 0 else list(reversed(times))):
            if name == "plain":
                elapsed, outputs[name] = timed(lambda: plain_loop_measures(model, pairs))
            else:
                batch_size = int(name.removeprefix("ours_bs"))
                elapsed, outputs[name] = timed(lambda: compute_pair_measures(model, pairs, batch_size=batch_size))
            times[name].append(elapsed)
        print(f"repetition {repetition}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)

    checks = {name: {measure: max_relative_difference(outputs[name][measure], outputs["plain"][measure])
                     for measure in MEASURE_NAMES}
              for name in outputs if name != "plain"}
    medians = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        "# CHES benchmark (issue 4, issue 7 item 2)", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- data: {len(pairs)} UltraFeedback pairs ({args.dataset}, seed {args.seed}, max_input_length "
        f"{args.max_input_length}); model {args.model} fp32 on CPU",
        f"- tokens forwarded: plain loop {tokens_plain}, ours {tokens_ours} "
        f"({tokens_plain / tokens_ours:.2f}x fewer; the plain loop also runs the LM head on every token)",
        f"- repetitions: {args.repetitions}, interleaved (order reversed every other repetition); the machine is "
        "shared with other jobs, so absolute times are noisy and the ratio is what counts",
        f"- load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in load_before)}, at end "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs", "",
        "| method | median time (s) | pairs/s | speed-up vs plain (median times) | per-repetition times (s) |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {medians[name]:.1f} | {len(pairs) / medians[name]:.2f} | "
                     f"{medians['plain'] / medians[name]:.2f}x | {', '.join(f'{v:.1f}' for v in values)} |")
    lines += ["", "Max relative difference per pair, ours vs plain loop:", ""]
    lines += [f"- {name}: " + ", ".join(f"{m} {d:.2e}" for m, d in check.items()) for name, check in checks.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.results_path).write_text(text)
    failed = {name: check for name, check in checks.items() if max(check.values()) > args.rtol}
    if failed:
        raise SystemExit(f"scores differ by more than rtol {args.rtol}: {failed}")


if __name__ == "__main__":
    main()
