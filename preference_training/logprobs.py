"""Log-probs of whole splits (no gradients): evaluation points, and the reference log-probs with their on-disk cache.

Splits: work is sharded over processes (rank r takes pairs r, r + W, ...) and gathered, so every process ends with the
full (N,) tensors. The reference log-probs come from the on-disk cache (below) when the
main process finds an entry; otherwise every process computes its shard and the main process stores the result.

Cache (so no reference model is kept in memory during training): the reference log-probs log pi_ref(y+|x),
log pi_ref(y-|x) of every pair are computed once with the initial model (no gradients) before training starts, and
stored in

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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from common.distributed import ProcessGroup
from common.io_utils import atomic_write_via
from common.preference_data import TokenizedPair
from common.sequence_logprobs import batch_logps_padded, pair_logps

log = logging.getLogger("ld.preference_training.logprobs")
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


@dataclass
class LogpsOptions:
    """How pair log-probs are computed (mirrors the config fields of the same names).

    Attributes:
        padding_free: One pair at a time without padding; else right-padded batches of `batch_size` pairs.
        share_prompt: Padding-free path: run each prompt once for both responses.
        batch_size: Pairs per forward in the padded path.
        pad_token_id: Id written into padding (never attended).
        keep_logits: The model accepts `logits_to_keep`.
    """

    padding_free: bool = True
    share_prompt: bool = True
    batch_size: int = 8
    pad_token_id: int = 0
    keep_logits: bool = True

    def logps(self, model: torch.nn.Module, pairs: Sequence[TokenizedPair], direct_weight_grads: bool = False
              ) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) (B,) float32 summed log-probs of `pairs`, graph-connected if grad is enabled;
        `direct_weight_grads`: see `pair_logps` (only for callers that run `.backward()`)."""
        if self.padding_free:
            results = [pair_logps(model, pair, share_prompt=self.share_prompt, keep_logits=self.keep_logits,
                                  direct_weight_grads=direct_weight_grads) for pair in pairs]
            return torch.stack([c for c, _ in results]), torch.stack([r for _, r in results])
        return batch_logps_padded(model, pairs, self.pad_token_id, keep_logits=self.keep_logits)


@torch.no_grad()
def compute_split_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], options: LogpsOptions,
                        group: ProcessGroup, description: str = "log-probs") -> tuple[Tensor, Tensor]:
    """(chosen, rejected) (N,) float32 CPU tensors for all `pairs`, identical on every process."""
    positions = group.shard(len(pairs))
    step = 1 if options.padding_free else options.batch_size
    local: list[tuple[int, float, float]] = []
    with tqdm(total=len(positions), desc=description, unit="pair", leave=False, disable=not group.is_main) as bar:
        for start in range(0, len(positions), step):
            chunk = positions[start:start + step]
            chosen, rejected = options.logps(model, [pairs[i] for i in chunk])
            local.extend(zip(chunk, chosen.tolist(), rejected.tolist()))
            bar.update(len(chunk))
    chosen_all = torch.full((len(pairs),), float("nan"))
    rejected_all = torch.full((len(pairs),), float("nan"))
    for position, chosen, rejected in group.gather_objects(local):
        chosen_all[position], rejected_all[position] = chosen, rejected
    return chosen_all, rejected_all


def reference_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], options: LogpsOptions,
                    group: ProcessGroup, cache_dir: Path | None, key: dict,
                    description: str = "reference log-probs") -> tuple[Tensor, Tensor, bool]:
    """Reference (initial-model) log-probs of `pairs` from the cache, or computed and cached.

    Must be called before the first optimizer step. The main process decides hit or miss, so all processes
    take the same branch.

    Returns:
        (chosen, rejected, hit): (N,) float32 CPU tensors and whether they came from the cache.
    """
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    cached = load_cached_logps(path, len(pairs)) if path is not None and group.is_main else None
    hit = bool(group.gather_objects([cached is not None])[0])
    if hit:
        cached = cached if group.is_main else load_cached_logps(path, len(pairs))
        if cached is None:
            raise RuntimeError(f"reference cache {path}: readable by the main process but not by rank "
                               f"{group.rank}; put outputs_dir on storage every process can read")
        log.info("reference log-probs (%s): cache hit %s", description, path)
        return cached[0], cached[1], True
    chosen, rejected = compute_split_logps(model, pairs, options, group, description)
    if path is not None and group.is_main:
        save_cached_logps(path, chosen, rejected, key)
        log.info("reference log-probs (%s): cache miss, saved %s", description, path)
    return chosen, rejected, False
