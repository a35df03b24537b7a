"""On-disk cache of reference log-probs, so no reference model is kept in memory during training.

The reference log-probs log pi_ref(y+|x), log pi_ref(y-|x) of every pair are computed once with the initial
model (no gradients) before training starts, and stored in

    <cache_dir>/<sha256 of the key>.safetensors     tensors `chosen_logps`, `rejected_logps` (N,) float32

The key (JSON, also stored in the file's metadata) holds everything the numbers depend on: the model name, the
checkpoint path and a fingerprint of its files (name, size, mtime), whether it is a LoRA checkpoint, the dtype,
the tokenizer (name and vocabulary size), the max input length, and a SHA-256 of every pair's token ids (which
already pins the data set, the formatting and the truncation). Runs of a plan that share model and data (e.g.
the 3 seeds of a quantile, or the IPO and DPO runs) then compute them once. Files are written atomically (mode
0666 minus the umask), so concurrent runs at worst compute the same entry twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

from safetensors.torch import load_file, save_file
from torch import Tensor

from common.io_utils import atomic_write_via
from common.preference_data import TokenizedPair

log = logging.getLogger("ld.reference_cache")
CACHE_FORMAT_VERSION = 1


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    """SHA-256 (hex) of the token ids of every pair, in order (prompt, chosen, rejected, source index)."""
    digest = hashlib.sha256()
    for pair in pairs:
        record = [pair.source_index, pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]
        digest.update(json.dumps(record, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint: str | None) -> list | None:
    """(relative name, size, mtime_ns) of every file under a local checkpoint directory; None without one.

    A Hub id (not a local path) is returned as [id]. A rerun that rewrites the checkpoint changes the mtimes,
    so the cache never serves log-probs of older weights.
    """
    if not checkpoint:
        return None
    root = Path(checkpoint)
    if not root.exists():
        return [checkpoint]
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def reference_cache_key(*, model: str, checkpoint: str | None, is_lora_checkpoint: bool, dtype: str,
                        tokenizer, max_input_length: int | None, pairs: Sequence[TokenizedPair]) -> dict:
    """The JSON-able dict that identifies a set of reference log-probs (see the module docstring)."""
    return {
        "version": CACHE_FORMAT_VERSION,
        "model": model,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint and Path(checkpoint).exists() else checkpoint,
        "checkpoint_files": checkpoint_fingerprint(checkpoint),
        "is_lora_checkpoint": bool(is_lora_checkpoint),
        "dtype": dtype,
        "tokenizer": [getattr(tokenizer, "name_or_path", type(tokenizer).__name__), len(tokenizer)],
        "max_input_length": max_input_length,
        "num_pairs": len(pairs),
        "data_sha256": pairs_fingerprint(pairs),
    }


def cache_path(cache_dir: Path, key: dict) -> Path:
    """`<cache_dir>/<sha256 of the canonical key JSON>.safetensors`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{digest}.safetensors"


def load_cached_logps(path: Path, num_pairs: int) -> tuple[Tensor, Tensor] | None:
    """(chosen, rejected) (N,) float32 tensors from a cache file, or None if absent or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        tensors = load_file(str(path))
        chosen, rejected = tensors["chosen_logps"], tensors["rejected_logps"]
    except Exception as error:  # a corrupt entry is recomputed, never trusted
        log.warning("reference cache %s unreadable (%s); recomputing", path, error)
        return None
    if chosen.shape != (num_pairs,) or rejected.shape != (num_pairs,):
        log.warning("reference cache %s has shapes %s/%s, expected (%d,); recomputing", path,
                    tuple(chosen.shape), tuple(rejected.shape), num_pairs)
        return None
    return chosen, rejected


def save_cached_logps(path: Path, chosen: Tensor, rejected: Tensor, key: dict) -> None:
    """Write the tensors (and the key as metadata) atomically to `path`."""
    tensors = {"chosen_logps": chosen.detach().float().cpu().contiguous(),
               "rejected_logps": rejected.detach().float().cpu().contiguous()}
    atomic_write_via(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"key": json.dumps(key, sort_keys=True)}))
