"""Per-example preference similarity (CHES, length-normalised CHES, edit distance, last hidden-state product).

The reference implementation's command runs as it is (absl-style flags; `--gpu_id` without CUDA uses the CPU):

    python compute_preference_similarity_per_example.py --model allenai/OLMo-1B-hf \
        --dataset HuggingFaceH4/ultrafeedback_binarized --output_dir outputs/pref_similarity \
        --num_train_samples 5000 --train_samples_random_seed 548 --gpu_id 0
    python compute_preference_similarity_per_example.py --model smollm2-135m-instruct \
        --dataset data_files/ultrafeedback/train_1000.jsonl --max_input_length 512

In:  a preference data set (Hub id or local file, `common.preference_data`; `--dataset_format` is inferred when
     not given), a model (`common.models.load_model_and_tokenizer`).
Out: `<output_dir>/<model display>_<dataset display>/results_samples.pt` (layout: `ches/results_file.py`; read
     it with `ches.ches.load_similarity_results`; the reference trainer reads it too), `summary.json` (counts,
     skip reasons, statistics of every measure, settings) and a log file beside it. Display names: the last
     `/`-part of the model; `--custom_dataset_display_name`, else the last `/`-part of a Hub id, else
     `<folder>_<stem>` of a local file (`data_files/ultrafeedback/train_1000.jsonl` -> `ultrafeedback_train_1000`).
     While running, `results_samples.partial.pt` (same layout, `complete` False) is rewritten every
     `--save_every_seconds` and on Ctrl-C / errors; a rerun with the same arguments resumes it. A complete
     `results_samples.pt` is never replaced without `--overwrite`.
Definitions (positions, truncation, prompt format, the row draw) follow the reference: docs/ches.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ches.ches import (
    LENGTH_NAMES, MEASURE_NAMES, iterate_pair_measures, load_similarity_results, reference_pair_summaries,
    relative_difference, summarize_pair_hidden_states, summarize_pair_with_prompt_cache,
)
from common.cli import add_bool_flag, add_gpu_id_flag, device_from_gpu_id, fail
from common.data_locations import DataNotFoundError, is_hub_dataset_id, locate_data_file
from common.io_utils import atomic_write_json, atomic_write_via
from common.names import DTYPE_NAMES
from common.preference_data import (
    DATASET_FORMATS, HUB_DEFAULT_SPLITS, PreferenceExample, TokenizedPair, infer_dataset_format,
    load_preference_examples, sample_row_indices,
)
from common.preference_tokenization import (
    PROMPT_FORMATS, SIMILARITY_SCRIPT_OPTIONS, TRUNCATIONS, prepare_tokenizer_for_prompt_format, tokenize_pair,
)

logger = logging.getLogger("compute_preference_similarity")
RESULTS_FILE = "results_samples.pt"
PARTIAL_FILE = "results_samples.partial.pt"
# Settings that must match for a partial file to be resumed.
RESUME_KEYS = ("model", "dataset", "dataset_format", "split", "num_train_samples", "train_samples_random_seed",
               "max_input_length", "dtype", "prompt_format", "truncation", "skip_identical_pairs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference script's flags (same names, defaults and meaning).
    parser.add_argument("--output_dir", default="outputs/pref_similarity", help="parent of the per-run directory")
    parser.add_argument("--cache_dir", default=None, help="accepted for the reference's commands; the Hugging Face "
                                                          "default cache is used (set HF_HOME to move it)")
    parser.add_argument("--dont_save_logs", action="store_true", help="log to the console only, no log file")
    parser.add_argument("--model", default="allenai/OLMo-1B-hf", help="built-in name, Hub id or local directory")
    parser.add_argument("--dataset", default="tatsu-lab/alpaca_farm", help="Hub id or local data file")
    parser.add_argument("--custom_dataset_display_name", default="", help="dataset part of the directory name")
    parser.add_argument("--num_train_samples", type=int, default=-1, help="pairs to draw (< 0: all)")
    parser.add_argument("--train_samples_random_seed", type=int, default=-1,
                        help="seed of the torch.randperm draw (<= 0: unseeded, as the reference)")
    parser.add_argument("--max_input_length", type=int, default=512,
                        help="max tokens of prompt + response (<= 0: no truncation)")
    parser.add_argument("--chat_chosen_field", default="chosen", help="column holding the chosen response")
    parser.add_argument("--chat_rejected_field", default="rejected", help="column holding the rejected response")
    add_gpu_id_flag(parser)
    # Ours.
    for old, new in (("--num_samples", "num_train_samples"), ("--seed", "train_samples_random_seed")):  # old names
        parser.add_argument(old, dest=new, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset_format", default=None, choices=DATASET_FORMATS,
                        help="default: inferred from the Hub id or the file's columns")
    parser.add_argument("--split", default=None, help="Hub split (default: train_prefs for UltraFeedback, "
                                                      "preference for AlpacaFarm, else train); ignored for files")
    parser.add_argument("--prompt_format", default="paper", choices=PROMPT_FORMATS,
                        help="paper: chat template, else <|prompter|>..<|assistant|> (reference); plain: chat "
                             "template, else prompt + newline. Default paper")
    parser.add_argument("--truncation", default="paper", choices=TRUNCATIONS,
                        help="paper: right-cut, drop emptied pairs (reference); keep_response: cut the prompt "
                             "from the left. Default paper")
    add_bool_flag(parser, "skip_identical_pairs", default=False,
                  help="skip pairs whose responses are identical (the reference scores them: CHES 0)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="pairs per forward. Default: 1 on CPU (prompt key/value cache path), 8 on a GPU")
    parser.add_argument("--padding_side", default="right", choices=("left", "right"))
    parser.add_argument("--device", default=None, help="cpu or cuda:N; overrides --gpu_id")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="model dtype. Default float32")
    parser.add_argument("--save_every_seconds", type=float, default=30.0, help="partial-file interval. Default 30")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing complete results file")
    add_bool_flag(parser, "self_check", default=True,
                  help="compare the shortest pair with a plain full forward before the run")
    parser.add_argument("--no_self_check", dest="self_check", action="store_false", help=argparse.SUPPRESS)
    return parser


def _check_display_name(name: str, flag: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode()) > 200:
        fail(f"{flag}: {name!r} cannot name a directory (no '/', not '.' or '..', at most 200 bytes)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check every argument; bad input exits 2 with one `error:` line, before anything is written."""
    args = build_parser().parse_args(argv)
    if args.num_train_samples == 0:
        fail("--num_train_samples 0 selects no pair; pass a positive count, or -1 for all rows")
    args.num_train_samples = None if args.num_train_samples < 0 else args.num_train_samples
    if args.max_input_length == 1:
        fail("--max_input_length 1 leaves no room for a response token; pass >= 2, or -1 for no truncation")
    args.max_input_length = None if args.max_input_length <= 0 else args.max_input_length
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {args.batch_size}")
    if not args.save_every_seconds > 0:
        fail(f"--save_every_seconds must be > 0, got {args.save_every_seconds}")
    if args.custom_dataset_display_name:
        _check_display_name(args.custom_dataset_display_name, "--custom_dataset_display_name")
    if is_hub_dataset_id(args.dataset):
        args.dataset_path = args.dataset
    else:
        try:
            args.dataset_path = str(locate_data_file(args.dataset))  # the data-location rule, Hub last
        except DataNotFoundError as error:
            fail(f"--dataset: {error}")
    args.split = args.split or HUB_DEFAULT_SPLITS.get(args.dataset, "train")
    if args.dataset_format is None:
        try:
            args.dataset_format = infer_dataset_format(args.dataset_path, args.split, column_renames(args))
        except (ValueError, OSError) as error:  # no rule matches, or a Hub data set that cannot be reached
            fail(f"--dataset_format not given and not inferable: {error}")
    _check_display_name(display_name(args), "--dataset (display name)")
    return args


def display_name(args: argparse.Namespace) -> str:
    """`<model display>_<dataset display>` (module docstring)."""
    model = Path(args.model.rstrip("/")).name if Path(args.model).exists() else args.model.split("/")[-1]
    if args.custom_dataset_display_name:
        dataset = args.custom_dataset_display_name
    elif args.dataset_path == args.dataset and is_hub_dataset_id(args.dataset):
        dataset = args.dataset.split("/")[-1]
    else:
        path = Path(args.dataset)
        stem = path.name.split(".")[0]
        dataset = f"{path.parent.name}_{stem}" if path.parent.name else stem
    return f"{model}_{dataset}"


def output_path(args: argparse.Namespace) -> Path:
    """`<output_dir>/<model display>_<dataset display>/results_samples.pt`."""
    return Path(args.output_dir) / display_name(args) / RESULTS_FILE


class SimilarityResults:
    """Scores and skip reasons per drawn row, written in the file layout of `ches/results_file.py`."""

    def __init__(self, settings: dict, drawn_rows: list[int]):
        self.settings = dict(settings)
        self.drawn_rows = list(drawn_rows)
        self.scored: dict[int, tuple[list[float], list[int]]] = {}  # row -> (measures, lengths)
        self.skipped: dict[int, str] = {}  # row -> reason

    @classmethod
    def from_partial(cls, path: Path, settings: dict) -> "SimilarityResults":
        """Resume `path` when its settings match `settings` (exits 2 otherwise)."""
        try:
            existing = load_similarity_results(path, allow_partial=True)
        except ValueError as error:
            fail(f"{error}")
        old = existing["settings"]
        mismatched = {key: (old.get(key), settings[key]) for key in RESUME_KEYS if old.get(key) != settings[key]}
        if mismatched or "drawn_sample_indices" not in existing:
            fail(f"{path} is a partial file from other settings {mismatched} (file vs now); delete it or pass "
                 "--overwrite to start over")
        results = cls(settings, existing["drawn_sample_indices"].tolist())
        for position, row in enumerate(existing["sample_indices"].tolist()):
            results.scored[row] = ([existing[name][position].item() for name in MEASURE_NAMES],
                                   [existing[name][position].item() for name in LENGTH_NAMES])
        results.skipped = dict(zip(existing["skipped_sample_indices"].tolist(), existing["skip_reasons"]))
        return results

    def done(self, row: int) -> bool:
        return row in self.scored or row in self.skipped

    def record(self, rows: list[int], pairs: list[TokenizedPair], measures: dict[str, list[float]]) -> None:
        for position, (row, pair) in enumerate(zip(rows, pairs)):
            self.scored[row] = ([measures[name][position] for name in MEASURE_NAMES],
                                [len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)])

    def to_file(self, complete: bool) -> dict:
        scored_rows = [row for row in self.drawn_rows if row in self.scored]
        skipped_rows = [row for row in self.drawn_rows if row in self.skipped]
        file = {"sample_indices": torch.tensor(scored_rows, dtype=torch.long)}
        for index, name in enumerate(MEASURE_NAMES):
            file[name] = torch.tensor([self.scored[row][0][index] for row in scored_rows], dtype=torch.float64)
        for index, name in enumerate(LENGTH_NAMES):
            file[name] = torch.tensor([self.scored[row][1][index] for row in scored_rows], dtype=torch.long)
        file["skipped_sample_indices"] = torch.tensor(skipped_rows, dtype=torch.long)
        file["skip_reasons"] = [self.skipped[row] for row in skipped_rows]
        file["drawn_sample_indices"] = torch.tensor(self.drawn_rows, dtype=torch.long)
        file["settings"] = dict(self.settings, complete=complete)
        return file


def save(results: SimilarityResults, path: Path, complete: bool) -> None:
    """Write the similarity file atomically (a reader never sees a half-written file)."""
    file = results.to_file(complete)
    atomic_write_via(path, lambda tmp: torch.save(file, tmp))


def summarize(file: dict) -> dict:
    """Counts, skip reasons, and per measure and length count/mean/std/min/quantiles/max."""
    summary = {"num_drawn": len(file["drawn_sample_indices"]), "num_scored": len(file["sample_indices"]),
               "num_skipped": len(file["skip_reasons"]),
               "skip_reasons": dict(collections.Counter(file["skip_reasons"]))}
    for name in MEASURE_NAMES + LENGTH_NAMES:
        values = file[name].double()
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


def _settings(args: argparse.Namespace) -> dict:
    return {"model": args.model, "dataset": args.dataset, "dataset_format": args.dataset_format, "split": args.split,
            "num_train_samples": args.num_train_samples, "train_samples_random_seed": args.train_samples_random_seed,
            "max_input_length": args.max_input_length, "dtype": args.dtype, "prompt_format": args.prompt_format,
            "truncation": args.truncation, "skip_identical_pairs": args.skip_identical_pairs,
            "batch_size": args.batch_size, "padding_side": args.padding_side}


def _start_logging(args: argparse.Namespace, directory: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.dont_save_logs:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y_%m_%d-%H_%M_%S")
        handler = logging.FileHandler(directory / f"log_samples_{args.num_train_samples or -1}_{stamp}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def column_renames(args: argparse.Namespace) -> dict[str, str]:
    """{file column: format column} from --chat_chosen_field / --chat_rejected_field (empty by default)."""
    return {old: new for old, new in ((args.chat_chosen_field, "chosen"), (args.chat_rejected_field, "rejected"))
            if old != new}


def _load_examples(args: argparse.Namespace, rows: list[int] | None) -> list[PreferenceExample]:
    """The drawn examples, in draw order (`rows` given: those rows, e.g. from a partial file)."""
    examples = load_preference_examples(args.dataset_path, args.dataset_format, split=args.split,
                                        column_renames=column_renames(args))
    if rows is None:
        rows = sample_row_indices(len(examples), args.num_train_samples, args.train_samples_random_seed,
                                  "torch_randperm")
    return [examples[row] for row in rows]


def main(argv: list[str] | None = None) -> Path:
    """Run the computation; returns the path of `results_samples.pt`."""
    args = parse_args(argv)
    path = output_path(args)
    partial_path = path.with_name(PARTIAL_FILE)
    if path.exists() and not args.overwrite:
        try:
            load_similarity_results(path)
        except ValueError as error:
            fail(f"existing output {error}")
        fail(f"{path} already exists (complete); pass --overwrite to recompute it")
    device = args.device or device_from_gpu_id(args.gpu_id)
    if args.batch_size is None:
        args.batch_size = 1 if device == "cpu" else 8
    settings = _settings(args)
    resumed = SimilarityResults.from_partial(partial_path, settings) if (partial_path.exists() and not args.overwrite) \
        else None
    try:
        examples = _load_examples(args, resumed.drawn_rows if resumed else None)
    except (ValueError, OSError, IndexError) as error:  # bad rows, a Hub data set that cannot be reached
        fail(f"--dataset {args.dataset}: {error}")
    from common.models import load_model_and_tokenizer  # heavy import, after the cheap checks
    try:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=device)
    except (ValueError, OSError) as error:  # ModelLoadError: not found, offline, no tokenizer files
        fail(f"--model {args.model}: {error}")
    model.eval()

    path.parent.mkdir(parents=True, exist_ok=True)
    _start_logging(args, path.parent)
    logger.info("settings: %s", settings)
    if args.cache_dir:
        logger.warning("--cache_dir %s is not used: models and Hub data sets go to the Hugging Face default cache "
                       "(set HF_HOME=%s to move it)", args.cache_dir, args.cache_dir)
    results = resumed or SimilarityResults(settings, [e.source_index for e in examples])
    if resumed:
        logger.info("resuming %s: %d of %d rows done", partial_path, len(resumed.scored) + len(resumed.skipped),
                    len(examples))
    if prepare_tokenizer_for_prompt_format(tokenizer, model, args.prompt_format):
        logger.info("added the paper prompt markers to the tokenizer (vocabulary %d)", len(tokenizer))
    options = dataclasses.replace(SIMILARITY_SCRIPT_OPTIONS, prompt_format=args.prompt_format,
                                  truncation=args.truncation, skip_identical=args.skip_identical_pairs)
    todo_pairs: list[TokenizedPair] = []
    for example in examples:
        if results.done(example.source_index):
            continue
        pair = tokenize_pair(tokenizer, example, args.max_input_length, options)
        if isinstance(pair, str):
            results.skipped[example.source_index] = pair
        else:
            todo_pairs.append(pair)
    logger.info("%d rows: %d to compute, %d skipped", len(examples), len(todo_pairs), len(results.skipped))
    if todo_pairs and args.self_check:
        self_check(model, todo_pairs, args.dtype, args.batch_size)
    start = last_save = time.monotonic()
    try:
        with tqdm(total=len(todo_pairs), desc="similarity", unit="pair") as progress:
            for positions, measures in iterate_pair_measures(model, todo_pairs, batch_size=args.batch_size,
                                                             padding_side=args.padding_side):
                batch = [todo_pairs[p] for p in positions]
                results.record([p.source_index for p in batch], batch, measures)
                progress.update(len(positions))
                if time.monotonic() - last_save > args.save_every_seconds:
                    save(results, partial_path, complete=False)
                    last_save = time.monotonic()
    except BaseException:  # Ctrl-C or a crash: keep what was computed, resumable by a rerun
        save(results, partial_path, complete=False)
        logger.warning("interrupted; partial results saved to %s (rerun with the same arguments to resume)",
                       partial_path)
        raise
    elapsed = time.monotonic() - start
    if not results.scored:
        fail(f"no pair could be scored out of {len(examples)} (skip reasons: "
             f"{dict(collections.Counter(results.skipped.values()))}); raise --max_input_length or check the data")
    save(results, path, complete=True)
    partial_path.unlink(missing_ok=True)
    file = results.to_file(complete=True)
    summary = summarize(file) | {"settings": file["settings"], "output_file": str(path), "elapsed_seconds": elapsed,
                                 "pairs_per_second": len(todo_pairs) / elapsed if elapsed > 0 else None}
    atomic_write_json(path.parent / "summary.json", summary)
    for name in MEASURE_NAMES:
        logger.info("%s: %s", name, summary[name])
    logger.info("scored %d, skipped %d (%s); wrote %s", summary["num_scored"], summary["num_skipped"],
                summary["skip_reasons"], path)
    return path


if __name__ == "__main__":
    main()
