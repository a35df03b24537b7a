"""Which pairs a dataset-level run trains and evaluates on (similarity filtering, held-out split).

Training pool:
  - with `similarity_results_path` (ours or the reference's `results_samples.pt`): the rows listed in the file's
    `sample_indices` (the pairs the CHES script scored; the pairs it skipped are recorded apart and never
    chosen); the subset is the `preference_num_samples` pairs in a window around `quantile` of the
    `pref_similarity_measure` scores (`ches.ches.select_quantile_window`, the reference trainer's
    `__quantile_slice` of the `argsort`; `quantile=None` = the lowest k, `ches.ches.select_lowest_k`).
  - without: `num_train_samples` rows of `dataset` drawn with `data_seed` (all rows if None).
Held-out split: `num_eval_samples` rows of `eval_dataset` drawn with `data_seed`, or, if `eval_dataset` is None,
rows of `dataset` outside the pool (and outside every row the similarity file drew, scored or skipped).
The trainer then drops selected pairs whose prompt is longer than `max_input_length` (`truncation` "paper", the
reference trainer's filter after selection), so a run can train on fewer than `preference_num_samples` pairs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ches.ches import load_similarity_results, select_lowest_k, select_quantile_window
from common.data_locations import find_local_data_file, is_hub_dataset_id
from common.preference_data import PreferenceExample, load_preference_examples
from preference_training.config import PreferenceTrainingConfig


@dataclass
class SelectedExamples:
    """Training and held-out examples plus a JSON-able description of the selection (for summary.json)."""

    train: list[PreferenceExample]
    eval: list[PreferenceExample]
    info: dict = field(default_factory=dict)


def _same_dataset(recorded: str, configured: str) -> bool:
    """Same file by the data-location rule (e.g. `data_files/x.jsonl` and the $LD_DATA_DIR copy it resolves to)."""
    recorded_file, configured_file = find_local_data_file(recorded), find_local_data_file(configured)
    if recorded_file is not None and configured_file is not None:
        return recorded_file.resolve() == configured_file.resolve()
    return recorded == configured


def _check_settings(config: PreferenceTrainingConfig, settings: dict) -> None:
    """The similarity file must describe the same data (dataset, format, truncation) as the run."""
    path = config.similarity_results_path
    checks = [("dataset", config.dataset, _same_dataset),
              ("dataset_format", config.dataset_format, lambda a, b: a == b),
              ("max_input_length", config.max_input_length, lambda a, b: a == b),
              ("truncation", config.truncation, lambda a, b: a == b)]
    if is_hub_dataset_id(config.dataset):  # a Hub id: the split matters too
        checks.append(("split", config.dataset_split, lambda a, b: a == b))
    for key, expected, same in checks:
        if key in settings and not same(settings[key], expected):
            raise ValueError(f"similarity_results_path {path}: computed with {key}={settings[key]!r}, but the run "
                             f"has {key}={expected!r}; rerun compute_preference_similarity_per_example.py with "
                             f"the run's settings or change the run config")


def select_similarity_rows(config: PreferenceTrainingConfig,
                           allowed_rows: set[int] | None = None) -> tuple[list[int], list[int], dict]:
    """(training rows, rows the file drew, info) from the similarity results file (see the module docstring).

    `allowed_rows`: when given, only these rows can be selected (the others count as unscored)."""
    results = load_similarity_results(config.similarity_results_path)
    _check_settings(config, results.get("settings", {}))
    rows = [int(i) for i in results["sample_indices"].tolist()]
    drawn = rows + [int(i) for i in results["skipped_sample_indices"].tolist()]
    if config.num_train_samples is not None and config.num_train_samples not in (len(rows), len(drawn)):
        raise ValueError(f"num_train_samples={config.num_train_samples} but {config.similarity_results_path} "
                         f"drew {len(drawn)} pairs and scored {len(rows)}; set num_train_samples to one of them "
                         "or null")
    scores = [float(s) for s in results[config.pref_similarity_measure].tolist()]
    if allowed_rows is not None:
        scores = [score if row in allowed_rows else math.nan for row, score in zip(rows, scores)]
    valid = [s for s in scores if not math.isnan(s)]
    if not valid:
        raise ValueError(f"similarity_results_path {config.similarity_results_path}: none of its scored rows can be "
                         "selected (every score is NaN or outside the training-pair filter)")
    k = config.preference_num_samples or len(valid)
    if k > len(valid):
        raise ValueError(f"similarity_results_path {config.similarity_results_path}: preference_num_samples={k} but "
                         f"only {len(valid)} scored rows"
                         + (" pass the training-pair filter" if allowed_rows is not None else "")
                         + "; lower preference_num_samples")
    if config.quantile is None:
        positions = select_lowest_k(scores, k)
    else:
        positions = select_quantile_window(scores, k, config.quantile)
    selected = [scores[p] for p in positions]
    info = {
        "selection/measure": config.pref_similarity_measure,
        "selection/quantile": config.quantile,
        "selection/num_scored": len(rows),
        "selection/num_skipped_by_similarity_script": len(drawn) - len(rows),
        "selection/num_valid_scores": len(valid),
        "selection/num_selected": len(positions),
        "selection/score_min": min(selected),
        "selection/score_max": max(selected),
        "selection/score_mean": sum(selected) / len(selected),
        "selection/pool_score_mean": sum(valid) / len(valid),
    }
    return [rows[p] for p in positions], drawn, info


def _draw(rows: list[int], count: int, seed: int, what: str) -> list[int]:
    if count > len(rows):
        raise ValueError(f"{what}: need {count} rows but only {len(rows)} are available; lower the count or "
                         f"set eval_dataset to a separate held-out file")
    return sorted(random.Random(seed).sample(rows, count))


def select_examples(config: PreferenceTrainingConfig,
                    keep: Callable[[PreferenceExample], bool] | None = None, keep_what: str = "") -> SelectedExamples:
    """Load `dataset` (and `eval_dataset`) and pick the training subset and held-out pairs of a run.

    `keep`: when given, the training subset (the `num_train_samples` draw or the similarity selection) is taken
    among the examples it accepts only; `keep_what` describes them for the error raised when none is accepted."""
    examples = load_preference_examples(config.dataset, config.dataset_format, split=config.dataset_split)
    by_row = {example.source_index: example for example in examples}
    allowed = None if keep is None else {row for row, example in by_row.items() if keep(example)}
    if allowed is not None and not allowed:
        raise ValueError(f"{config.dataset}: no pair is {keep_what or 'accepted by the training-pair filter'}")
    if config.similarity_results_path:
        train_rows, pool_rows, info = select_similarity_rows(config, allowed)
        missing = [row for row in pool_rows if row not in by_row]
        if missing:
            raise ValueError(f"{config.similarity_results_path}: rows {missing[:5]} are not in {config.dataset} "
                             f"({len(examples)} rows); was the file computed on another data set?")
    else:
        all_rows = sorted(by_row if allowed is None else allowed)
        count = config.num_train_samples or len(all_rows)
        train_rows = _draw(all_rows, count, config.data_seed, "num_train_samples")
        pool_rows, info = train_rows, {"selection/measure": None, "selection/num_selected": len(train_rows)}
    if config.num_eval_samples == 0:
        eval_examples = []
    elif config.eval_dataset:
        eval_examples = load_preference_examples(config.eval_dataset, config.dataset_format,
                                                 split=config.eval_dataset_split,
                                                 num_samples=config.num_eval_samples, seed=config.data_seed)
    else:
        used = set(pool_rows)
        eval_rows = _draw([row for row in sorted(by_row) if row not in used], config.num_eval_samples,
                          config.data_seed, "num_eval_samples (held-out rows of dataset outside the training pool)")
        eval_examples = [by_row[row] for row in eval_rows]
    info["selection/train_rows"] = list(train_rows)
    return SelectedExamples([by_row[row] for row in train_rows], eval_examples, info)
