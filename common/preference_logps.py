"""Log-probs of whole splits (no gradients): evaluation points and the cached reference log-probs.

Work is sharded over processes (rank r takes pairs r, r + W, ...) and gathered, so every process ends with the
full (N,) tensors. The reference log-probs come from the on-disk cache (`common/reference_cache.py`) when the
main process finds an entry; otherwise every process computes its shard and the main process stores the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from common.distributed import ProcessGroup
from common.preference_data import TokenizedPair
from common.reference_cache import cache_path, load_cached_logps, save_cached_logps
from common.sequence_logprobs import batch_logps_padded, pair_logps

log = logging.getLogger("ld.preference_logps")


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

    def logps(self, model: torch.nn.Module, pairs: Sequence[TokenizedPair]) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) (B,) float32 summed log-probs of `pairs`, graph-connected if grad is enabled."""
        if self.padding_free:
            results = [pair_logps(model, pair, share_prompt=self.share_prompt, keep_logits=self.keep_logits)
                       for pair in pairs]
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
