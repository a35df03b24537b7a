"""Per-example preference similarity (CHES, length-normalised CHES, edit distance, final hidden-state product).

    python compute_preference_similarity_per_example.py --model smollm2-135m-instruct \
        --dataset data_files/ultrafeedback/train_1000.jsonl --dataset_format ultrafeedback \
        --num_samples 1000 --seed 0 --max_input_length 512 --output_dir outputs/similarity

In:  a preference data set (`common.preference_data`), a model (`common.models.load_model_and_tokenizer`).
Out: `<output_dir>/<model>__<dataset>__n<N|all>__seed<S>__maxlen<L|none>.pt` (torch.save of plain tensors,
     lists and a settings dict; read it with `ches.ches.load_similarity_results`) and `<same name>.summary.json`.
     Every field is in lockstep with `sample_indices`; a skipped pair keeps its row (NaN scores, lengths -1,
     a non-empty `skip_reasons` entry). The file is rewritten atomically every `--save_every_seconds` and on
     Ctrl-C / errors, so an interrupted run leaves a partial file (`settings["complete"] == False`) that a
     rerun with the same arguments resumes. A complete file is never overwritten without `--overwrite`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ches.ches import (
    LENGTH_NAMES, MEASURE_NAMES, iterate_pair_measures, load_similarity_results, reference_pair_summaries,
    relative_difference, summarize_pair_hidden_states, summarize_pair_with_prompt_cache,
)
from common.io_utils import atomic_write_json
from common.preference_data import DATASET_FORMATS, TokenizedPair, load_preference_examples, tokenize_pair

logger = logging.getLogger("compute_preference_similarity")
# Settings that must match for a partial file to be resumed.
RESUME_KEYS = ("model", "dataset", "dataset_format", "split", "num_samples", "seed", "max_input_length", "dtype")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="built-in name, Hub id or local model directory")
    parser.add_argument("--dataset", required=True, help="Hub id or local .json/.jsonl/.jsonl.gz/.csv file")
    parser.add_argument("--dataset_format", required=True, choices=DATASET_FORMATS)
    parser.add_argument("--split", default="train", help="Hub split (ignored for local files). Default train")
    parser.add_argument("--num_samples", type=int, default=None, help="seeded subsample size; default: all rows")
    parser.add_argument("--seed", type=int, default=0, help="subsample seed. Default 0")
    parser.add_argument("--max_input_length", type=int, default=512,
                        help="max tokens of prompt + one response (see tokenize_pair); <= 0 = no limit. Default 512")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="pairs per forward. Default: 1 on CPU (prompt key/value cache path, the fastest there: "
                             "bench/RESULTS.md), 8 on a GPU (packed rows)")
    parser.add_argument("--padding_side", default="right", choices=("left", "right"))
    parser.add_argument("--output_dir", default="outputs/preference_similarity")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda:N. Default auto")
    parser.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16")
    parser.add_argument("--save_every_seconds", type=float, default=30.0, help="partial-file interval. Default 30")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing complete output file")
    parser.add_argument("--no_self_check", action="store_true",
                        help="skip comparing the shortest pair with a plain full forward before the run")
    args = parser.parse_args(argv)
    if args.max_input_length is not None and args.max_input_length <= 0:
        args.max_input_length = None
    return args


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def output_path(args: argparse.Namespace) -> Path:
    """Reproducible file name from (model, dataset, sample count, seed, max length)."""
    dataset = Path(args.dataset)
    if dataset.exists():
        name = dataset.name.split(".")[0]
        dataset_name = f"{dataset.parent.name}-{name}" if dataset.parent.name else name
    else:
        dataset_name = f"{args.dataset}-{args.split}"
    model_name = Path(args.model).name if Path(args.model).exists() else args.model
    count = "all" if args.num_samples is None else str(args.num_samples)
    length = "none" if args.max_input_length is None else str(args.max_input_length)
    stem = f"{_slug(model_name)}__{_slug(dataset_name)}__n{count}__seed{args.seed}__maxlen{length}"
    return Path(args.output_dir) / f"{stem}.pt"


def _empty_results(settings: dict, sample_indices: list[int]) -> dict:
    n = len(sample_indices)
    results = {"settings": dict(settings, complete=False), "sample_indices": torch.tensor(sample_indices),
               "skip_reasons": [""] * n, "computed": torch.zeros(n, dtype=torch.bool)}
    results.update({name: torch.full((n,), math.nan, dtype=torch.float64) for name in MEASURE_NAMES})
    results.update({name: torch.full((n,), -1, dtype=torch.long) for name in LENGTH_NAMES})
    return results


def _save(results: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(results, tmp)
    tmp.replace(path)


def _prepare_results(path: Path, settings: dict, sample_indices: list[int], overwrite: bool) -> dict:
    """Fresh results, or the partial file at `path` when its settings match (resume)."""
    if not path.exists() or overwrite:
        return _empty_results(settings, sample_indices)
    existing = load_similarity_results(path, allow_partial=True)
    if existing["settings"].get("complete"):
        raise SystemExit(f"{path} already exists (complete); pass --overwrite to recompute it")
    mismatched = {k: (existing["settings"].get(k), settings[k]) for k in RESUME_KEYS
                  if existing["settings"].get(k) != settings[k]}
    if mismatched or existing["sample_indices"].tolist() != sample_indices:
        raise SystemExit(f"{path} is a partial file from different settings {mismatched} (file vs now); "
                         "pass --overwrite to start over")
    logger.info("resuming %s: %d of %d rows already done", path, int(existing["computed"].sum()), len(sample_indices))
    return existing


def _record_batch(results: dict, rows: list[int], pairs: list[TokenizedPair], measures: dict[str, list[float]]
                  ) -> None:
    """Write one batch's measures and lengths into their rows and mark the rows computed."""
    for batch_position, (row, pair) in enumerate(zip(rows, pairs)):
        for name in MEASURE_NAMES:
            results[name][row] = measures[name][batch_position]
        lengths = (len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids))
        for name, length in zip(LENGTH_NAMES, lengths):
            results[name][row] = length
        results["computed"][row] = True


def summarize(results: dict) -> dict:
    """Counts, skip reasons, and per measure count/mean/std/min/quantiles/max over the non-NaN rows."""
    summary = {"num_rows": len(results["skip_reasons"]),
               "num_skipped": sum(1 for reason in results["skip_reasons"] if reason),
               "skip_reasons": dict(collections.Counter(r for r in results["skip_reasons"] if r))}
    for name in MEASURE_NAMES + LENGTH_NAMES:
        values = results[name].double()
        values = values[values >= 0] if name in LENGTH_NAMES else values[~torch.isnan(values)]
        if len(values) == 0:
            summary[name] = {"count": 0}
            continue
        quantiles = torch.quantile(values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
        summary[name] = {"count": len(values), "mean": values.mean().item(),
                         "std": values.std().item() if len(values) > 1 else 0.0,
                         **dict(zip(("min", "q25", "median", "q75", "max"), quantiles.tolist()))}
    return summary


def self_check(model: torch.nn.Module, pairs: list[TokenizedPair], dtype: str, batch_size: int) -> None:
    """Compare the path `batch_size` selects (1: prompt cache, else packed rows) with a plain full forward on the
    shortest pair; raise if they disagree (a model that ignores custom 4D masks, position ids or a shared cache
    would). Tolerance: 1e-3 relative in float32, 5e-2 in half precision."""
    pair = min(pairs, key=lambda p: len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids))
    summaries = summarize_pair_with_prompt_cache(model, pair) if batch_size == 1 else None
    if summaries is None:  # batch > 1, or a cache the batch-1 path cannot share (it falls back to packing too)
        summaries = summarize_pair_hidden_states(model, [pair])
    difference = relative_difference(summaries, reference_pair_summaries(model, pair))
    tolerance = 1e-3 if dtype == "float32" else 5e-2
    if not difference <= tolerance:
        raise RuntimeError(f"self-check failed on source row {pair.source_index}: hidden-state sums of the "
                           f"batch_size {batch_size} path differ from a plain full forward by {difference:.2e} "
                           f"(relative, tolerance {tolerance}); this architecture may not support custom 4D "
                           f"attention masks / position ids / a shared key-value cache")
    logger.info("self-check passed (relative difference %.2e on source row %d)", difference, pair.source_index)


def main(argv: list[str] | None = None) -> Path:
    """Run the computation; returns the path of the output file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    path = output_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.batch_size is None:
        args.batch_size = 1 if device == "cpu" else 8
    settings = {key: getattr(args, key) for key in RESUME_KEYS} | {"batch_size": args.batch_size,
                                                                   "padding_side": args.padding_side}
    examples = load_preference_examples(args.dataset, args.dataset_format, split=args.split,
                                        num_samples=args.num_samples, seed=args.seed)
    results = _prepare_results(path, settings, [e.source_index for e in examples], args.overwrite)

    from common.models import load_model_and_tokenizer  # heavy import, after the cheap checks
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=device)
    model.eval()

    todo_rows: list[int] = []
    todo_pairs: list[TokenizedPair] = []
    for row, example in enumerate(examples):
        if bool(results["computed"][row]):
            continue
        pair = tokenize_pair(tokenizer, example, args.max_input_length)
        if isinstance(pair, str):
            results["skip_reasons"][row] = pair
            results["computed"][row] = True
            continue
        todo_rows.append(row)
        todo_pairs.append(pair)
    logger.info("%d rows: %d to compute, %d skipped", len(examples), len(todo_pairs),
                sum(1 for reason in results["skip_reasons"] if reason))

    if todo_pairs and not args.no_self_check:
        self_check(model, todo_pairs, args.dtype, args.batch_size)
    start = last_save = time.monotonic()
    try:
        with tqdm(total=len(todo_pairs), desc="similarity", unit="pair") as progress:
            for positions, measures in iterate_pair_measures(model, todo_pairs, batch_size=args.batch_size,
                                                             padding_side=args.padding_side):
                _record_batch(results, [todo_rows[p] for p in positions], [todo_pairs[p] for p in positions],
                              measures)
                progress.update(len(positions))
                if time.monotonic() - last_save > args.save_every_seconds:
                    _save(results, path)
                    last_save = time.monotonic()
    except BaseException:  # Ctrl-C or a crash: keep what was computed, resumable by a rerun
        _save(results, path)
        logger.warning("interrupted; partial results saved to %s (rerun with the same arguments to resume)", path)
        raise
    elapsed = time.monotonic() - start

    results["settings"]["complete"] = True
    _save(results, path)
    summary = summarize(results) | {"settings": results["settings"], "output_file": str(path),
                                    "elapsed_seconds": elapsed,
                                    "pairs_per_second": len(todo_pairs) / elapsed if elapsed > 0 else None}
    atomic_write_json(path.with_suffix(".summary.json"), summary)
    for name in MEASURE_NAMES:
        logger.info("%s: %s", name, summary[name])
    logger.info("skipped %d (%s); wrote %s", summary["num_skipped"], summary["skip_reasons"], path)
    return path


if __name__ == "__main__":
    main()
