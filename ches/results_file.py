"""The per-example similarity file (`results_samples.pt`): its fields, and the one reader.

The reference implementation's file is a `torch.save` of five tensors, in lockstep:
    sample_indices (N,) int64: rows of the source data set, in the order they were drawn;
    ches_scores, ln_ches_scores, minus_normalized_edit_distances, last_hidden_embedding_inner_prods (N,) float.
Ours has the same five (float64 scores, every row a scored pair, so the reference trainer's `argsort` over a
score never meets a skipped pair) plus keys the reference ignores:
    prompt_lengths, chosen_lengths, rejected_lengths (N,) int64: tokens after truncation (responses incl. EOS);
    skipped_sample_indices (M,) int64 and skip_reasons (list of M str): drawn rows that were not scored, why;
    drawn_sample_indices (N + M,) int64: every drawn row, in draw order (resuming a partial file uses it);
    settings (dict): the script's settings, `complete` True once every drawn row is done.
A partial file (an interrupted run) has the same layout under `results_samples.partial.pt`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from common.names import SIMILARITY_MEASURE_NAMES

MEASURE_NAMES = SIMILARITY_MEASURE_NAMES
LENGTH_NAMES = ("prompt_lengths", "chosen_lengths", "rejected_lengths")
REFERENCE_KEYS = ("sample_indices",) + MEASURE_NAMES


def read_torch_file(path: str | Path) -> dict:
    """`torch.load(path, weights_only=True)` of a dict; a file that is not one raises ValueError naming it."""
    try:
        results = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise
    except Exception as error:  # torch's unpickler raises many kinds (IndexError, KeyError, ...) on garbage
        raise ValueError(f"{path}: not a readable similarity file ({type(error).__name__}: {error}); delete it or "
                         "rerun compute_preference_similarity_per_example.py with --overwrite") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(results).__name__}; delete it or rerun "
                         "compute_preference_similarity_per_example.py with --overwrite")
    return results


def _checked_fields(results: dict, path: str | Path) -> dict:
    """The fields of `load_similarity_results` with their types and lengths checked (errors name `path`)."""
    scored = {key: results[key] for key in REFERENCE_KEYS + LENGTH_NAMES if key in results}
    lengths = {key: len(value) for key, value in scored.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: fields are not in lockstep, lengths {lengths}")
    loaded = {"sample_indices": torch.as_tensor(results["sample_indices"]).long()}
    for name in MEASURE_NAMES:
        loaded[name] = torch.as_tensor(results[name]).double()
        if any(math.isnan(value) for value in loaded[name].tolist()):
            raise ValueError(f"{path}: {name} holds NaN (a skipped row inside the scores: an old layout); rerun "
                             "compute_preference_similarity_per_example.py with --overwrite")
    loaded.update({name: torch.as_tensor(results[name]).long() for name in LENGTH_NAMES if name in results})
    loaded["skipped_sample_indices"] = torch.as_tensor(results.get("skipped_sample_indices", []), dtype=torch.long)
    loaded["skip_reasons"] = list(results.get("skip_reasons", []))
    if len(loaded["skip_reasons"]) != len(loaded["skipped_sample_indices"]):
        raise ValueError(f"{path}: {len(loaded['skip_reasons'])} skip_reasons for "
                         f"{len(loaded['skipped_sample_indices'])} skipped_sample_indices")
    if "drawn_sample_indices" in results:
        loaded["drawn_sample_indices"] = torch.as_tensor(results["drawn_sample_indices"]).long()
    loaded["settings"] = dict(results.get("settings", {"source": "reference", "complete": True}))
    return loaded


def load_similarity_results(path: str | Path, *, allow_partial: bool = False) -> dict:
    """Read a similarity file: ours (`compute_preference_similarity_per_example.py`) or the reference's.

    Returns:
        dict with `sample_indices` (N,) long (scored rows of the source data, draw order), every MEASURE_NAMES
        entry (N,) float64, `skipped_sample_indices` (M,) long and `skip_reasons` (M str) (empty for a
        reference file), `settings` (dict; `{"source": "reference"}` for a reference file), and the
        LENGTH_NAMES entries (N,) long when the file has them.

    Raises:
        ValueError: unreadable file, missing field, fields of different lengths, NaN scores, or a partial file
            (`settings["complete"]` False) without `allow_partial`. Every message names the file.
    """
    results = read_torch_file(path)
    missing = [key for key in REFERENCE_KEYS if key not in results]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}; a similarity file has {list(REFERENCE_KEYS)}")
    try:
        loaded = _checked_fields(results, path)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a string where a tensor belongs
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: a field has the wrong type ({error}); the scores and indices must be 1-D "
                         "tensors, skip_reasons a list of str, settings a dict") from None
    if not allow_partial and not loaded["settings"].get("complete", False):
        raise ValueError(f"{path}: partial file (run interrupted; rerun the script with the same arguments to "
                         "finish it), or pass allow_partial=True")
    return loaded
