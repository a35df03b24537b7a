"""Benchmark: CHES over UltraFeedback pairs, ours (`ches.ches.compute_pair_measures`) vs a plain batch-1 loop.

    python bench/bench_ches.py --num_pairs 1000 --chunk_size 100 --batch_sizes 1 --threads 2

The plain loop is what most code does: for each pair and each response, a full forward of prompt + response
through the causal LM with `output_hidden_states=True` (LM head included, prompt computed twice), then the
same sums and the same formulas (`ches.ches.reference_pair_summaries`). Ours calls the base transformer only:
at batch 1 prompt + chosen once, then the rejected response over the prompt's key/value cache; at larger
batches rows packed as [prompt | chosen | rejected].

The machine is shared, so the methods are interleaved finely: the pairs are cut into chunks of `--chunk_size`
and every chunk is run by every method back to back, the order flipped from one chunk to the next. A method's
time for a repetition is the sum over its chunks; reported are medians over repetitions, the ratio of medians
(plain time / our time = our throughput gain) and the median of the per-chunk ratios. Every chunk's record
(times and scores) is appended to `--raw_path` as it finishes, so an interrupted run keeps what it measured,
and `--from_raw` rebuilds the results file from those records. A score more than `--rtol` (relative, per pair)
from the plain loop's is listed with its normwise difference and both sides' error against a float64 forward
(`adjudicate`); the script exits with an error, after writing the results, if a normwise difference exceeds
`--rtol`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_common import interleaved, machine_lines, markdown_table, median, set_threads, spread  # noqa: E402
from ches.ches import (  # noqa: E402
    MEASURE_NAMES, PairHiddenSummaries, compute_pair_measures, measures_from_summaries, reference_pair_summaries,
)
from common.models import load_model_and_tokenizer  # noqa: E402
from common.preference_data import TokenizedPair, load_preference_examples, tokenize_pair  # noqa: E402

PLAIN = "plain"


def plain_loop_measures(model: torch.nn.Module, pairs: list[TokenizedPair]) -> dict[str, list[float]]:
    """Batch-1 loop over `reference_pair_summaries` (full causal-LM forward with output_hidden_states, LM head
    included, prompt computed once per response), then the same formulas as ours."""
    per_pair = [measures_from_summaries(reference_pair_summaries(model, pair), [pair]) for pair in pairs]
    return {name: [measures[name][0] for measures in per_pair] for name in MEASURE_NAMES}


def max_relative_difference(ours: list[float], reference: list[float]) -> float:
    """max_i |ours_i - reference_i| / |reference_i| (denominator clamped at 1e-12)."""
    a, b = torch.tensor(ours, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return ((a - b).abs() / b.abs().clamp(min=1e-12)).max().item()


def run_method(model: torch.nn.Module, method: str, pairs: list[TokenizedPair]) -> tuple[float, dict]:
    """(wall seconds, measures) of one method on `pairs`; `method` is "plain" or "ours_bs{batch size}"."""
    start = time.perf_counter()
    if method == PLAIN:
        measures = plain_loop_measures(model, pairs)
    else:
        measures = compute_pair_measures(model, pairs, batch_size=int(method.removeprefix("ours_bs")))
    return time.perf_counter() - start, measures


def load_model_and_pairs(args: argparse.Namespace) -> tuple[torch.nn.Module, list[TokenizedPair]]:
    """The model (eval mode) and the usable pairs of the seeded draw, in draw order."""
    model, tokenizer = load_model_and_tokenizer(args.model)
    examples = load_preference_examples(args.dataset, "ultrafeedback", num_samples=args.num_pairs, seed=args.seed)
    pairs = [p for p in (tokenize_pair(tokenizer, e, args.max_input_length) for e in examples)
             if not isinstance(p, str)]
    return model.eval(), pairs


def measure(args: argparse.Namespace, model: torch.nn.Module, pairs: list[TokenizedPair], methods: list[str]
            ) -> list[dict]:
    """Run every (repetition, chunk, method), appending one record per run to `args.raw_path`."""
    chunk_size = args.chunk_size or len(pairs)
    chunks = [pairs[start:start + chunk_size] for start in range(0, len(pairs), chunk_size)]
    records = []
    Path(args.raw_path).parent.mkdir(parents=True, exist_ok=True)
    Path(args.raw_path).write_text("")
    progress = tqdm(total=args.repetitions * len(chunks) * len(methods), desc="chunk x method", unit="run")
    for repetition in range(args.repetitions):
        for chunk_index, chunk in enumerate(chunks):
            for method in interleaved(methods, repetition + chunk_index):
                seconds, measures = run_method(model, method, chunk)
                record = {"repetition": repetition, "chunk": chunk_index, "method": method, "seconds": seconds,
                          "num_pairs": len(chunk), "threads": args.threads, "load_average": os.getloadavg()[0],
                          "measures": measures}
                records.append(record)
                with open(args.raw_path, "a", encoding="utf-8") as raw:
                    raw.write(json.dumps(record) + "\n")
                progress.update()
                progress.set_postfix(method=method, seconds=f"{seconds:.1f}")
    progress.close()
    return records


def with_plain_records(records: list[dict]) -> list[tuple[dict, dict]]:
    """(record, the plain loop's record of the same repetition and chunk) for every record, plain ones included."""
    plain = {(r["repetition"], r["chunk"]): r for r in records if r["method"] == PLAIN}
    return [(record, plain[(record["repetition"], record["chunk"])]) for record in records]


def summarize(records: list[dict], pairs: list[TokenizedPair], args: argparse.Namespace) -> str:
    """Markdown results: machine, data, timings per method and the max relative score difference vs plain."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    repetitions = sorted({r["repetition"] for r in records})
    totals = {m: [sum(r["seconds"] for r in records if r["method"] == m and r["repetition"] == k)
                  for k in repetitions] for m in methods}
    num_pairs = sum(r["num_pairs"] for r in records if r["method"] == PLAIN and r["repetition"] == repetitions[0])
    tokens_plain = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    tokens_ours = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    paired = with_plain_records(records)
    rows, checks = [], {}
    for method in methods:
        chunk_ratios = [plain["seconds"] / record["seconds"] for record, plain in paired if record["method"] == method]
        rows.append([method, f"{median(totals[method]):.1f}", f"{num_pairs / median(totals[method]):.3f}",
                     f"{median(totals[PLAIN]) / median(totals[method]):.2f}x", spread(chunk_ratios),
                     ", ".join(f"{t:.1f}" for t in totals[method])])
        if method != PLAIN:
            checks[method] = {name: max(max_relative_difference(record["measures"][name], plain["measures"][name])
                                        for record, plain in paired if record["method"] == method)
                              for name in MEASURE_NAMES}
    threads = records[0].get("threads", args.threads)
    lines = ["# CHES benchmark (issue 4, issue 7 item 2)", ""] + machine_lines(sys.argv, threads) + [
        f"- data: {num_pairs} UltraFeedback pairs ({args.dataset}, seed {args.seed}, max_input_length "
        f"{args.max_input_length}); model {args.model} fp32 on CPU",
        f"- tokens forwarded: plain loop {tokens_plain}, ours {tokens_ours} ({tokens_plain / tokens_ours:.2f}x "
        "fewer; the plain loop also runs the LM head on every token)",
        f"- interleaving: {len(repetitions)} repetition(s) x {len({r['chunk'] for r in records})} chunks; every "
        "chunk run by every method back to back, order flipped from chunk to chunk; load average (1 min) at the "
        f"chunks {spread([r['load_average'] for r in records], 1)}", "",
        markdown_table(["method", "median total time (s)", "pairs/s", "speed-up vs plain (median totals)",
                        "per-chunk speed-up, median (min-max, n)", "total per repetition (s)"], rows), "",
        "Max relative difference per pair, ours vs plain loop:", ""]
    lines += [f"- {method}: " + ", ".join(f"{name} {value:.2e}" for name, value in check.items())
              for method, check in checks.items()]
    return "\n".join(lines) + "\n"


def score_scales(summaries: PairHiddenSummaries, pair: TokenizedPair) -> dict[str, float]:
    """Size of the terms each score is made of, the denominator of a normwise error (a score that is a small
    difference of large inner products cannot be more accurate, relative to itself, than its terms allow):
    ches ||S+|| (||S+|| + ||S-||); ln_ches the same with S±/|y±|; final inner product ||h+|| ||h-||."""
    chosen, rejected = summaries.chosen_sums.double().norm().item(), summaries.rejected_sums.double().norm().item()
    chosen_mean, rejected_mean = chosen / len(pair.chosen_ids), rejected / len(pair.rejected_ids)
    finals = summaries.chosen_final.double().norm().item() * summaries.rejected_final.double().norm().item()
    return {"ches_scores": chosen * (chosen + rejected), "ln_ches_scores": chosen_mean * (chosen_mean + rejected_mean),
            "last_hidden_embedding_inner_prods": finals}


def adjudicate(model: torch.nn.Module, pairs: list[TokenizedPair], records: list[dict], rtol: float
               ) -> tuple[list[str], bool]:
    """Every score of ours that differs from the plain loop's by more than `rtol` relative: its normwise
    difference |ours - plain| / scale (`score_scales`) and both fp32 scores' relative errors against a float64
    forward of the same pair. Returns Markdown lines and whether every normwise difference is <= `rtol`."""
    chunk_size = next(r["num_pairs"] for r in records if r["chunk"] == 0)  # every chunk but the last has this size
    outliers = []
    for record, plain in with_plain_records(records):
        if record["method"] == PLAIN:
            continue
        for name in ("ches_scores", "ln_ches_scores", "last_hidden_embedding_inner_prods"):
            for offset, (ours, theirs) in enumerate(zip(record["measures"][name], plain["measures"][name])):
                if abs(ours - theirs) > rtol * abs(theirs):
                    outliers.append((record["method"], record["chunk"] * chunk_size + offset, name, theirs, ours))
    if not outliers:
        return [f"Every score within {rtol:g} relative of the plain loop's."], True
    model64 = copy.deepcopy(model).double()
    references: dict[int, tuple[dict, dict]] = {}  # pair index -> (float64 measures, fp32 scales), once per pair
    rows, passed = [], True
    for method, index, name, theirs, ours in outliers:
        pair = pairs[index]
        if index not in references:
            references[index] = (measures_from_summaries(reference_pair_summaries(model64, pair), [pair]),
                                 score_scales(reference_pair_summaries(model, pair), pair))
        truth, normwise = references[index][0][name][0], abs(ours - theirs) / references[index][1][name]
        passed &= normwise <= rtol
        relative = [abs(ours - theirs) / abs(theirs), normwise, abs(theirs - truth) / abs(truth),
                    abs(ours - truth) / abs(truth)]
        rows.append([method, index, name, f"{theirs:.6g}", f"{ours:.6g}"] + [f"{value:.2e}" for value in relative])
    return [f"Scores more than {rtol:g} relative from the plain loop's ({len(outliers)}), with the normwise "
            "difference (|ours - plain| / size of the terms, see `score_scales`) and each fp32 score's relative "
            "error against a float64 forward of the pair:", "",
            markdown_table(["method", "pair", "score", "plain", "ours", "relative diff", "normwise diff",
                            "plain vs fp64", "ours vs fp64"], rows)], passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="data_files/ultrafeedback/train_1000.jsonl")
    parser.add_argument("--num_pairs", type=int, default=1000, help="seeded subsample of the data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_input_length", type=int, default=512)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1], help="our batch sizes to time")
    parser.add_argument("--chunk_size", type=int, default=100, help="pairs per interleaved chunk; 0 = all")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0 = torch's default, one per core (the issue's target is 2 cores)")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--results_path", default=str(Path(__file__).with_name("RESULTS_ches.md")))
    parser.add_argument("--raw_path", default="outputs/bench/ches_raw.jsonl",
                        help="one JSON record per chunk and method, appended as each finishes")
    parser.add_argument("--from_raw", action="store_true", help="summarize --raw_path without measuring")
    args = parser.parse_args()
    set_threads(args.threads)
    args.threads = torch.get_num_threads()

    model, pairs = load_model_and_pairs(args)
    if args.from_raw:
        records = [json.loads(line) for line in Path(args.raw_path).read_text().splitlines() if line.strip()]
    else:
        records = measure(args, model, pairs, [PLAIN] + [f"ours_bs{b}" for b in args.batch_sizes])
    text = summarize(records, pairs, args)
    outlier_lines, passed = adjudicate(model, pairs, records, args.rtol)
    text += "\n" + "\n".join(outlier_lines) + "\n"
    print(text)
    Path(args.results_path).write_text(text)
    if not passed:
        raise SystemExit(f"scores differ from the plain loop's by more than rtol {args.rtol} normwise")


if __name__ == "__main__":
    main()
