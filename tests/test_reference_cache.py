"""Reference log-prob cache: key sensitivity, round trip, corrupt entries, hit/miss through `reference_logps`.

Run: python -m pytest tests/test_reference_cache.py -x -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from common.distributed import ProcessGroup
from common.models import load_model_and_tokenizer
from common.preference_data import TokenizedPair
from common.sequence_logprobs import pair_logps
from preference_training.logprobs import (LogpsOptions, cache_path, checkpoint_fingerprint, load_cached_logps,
                                          pairs_fingerprint, reference_cache_key, reference_logps, save_cached_logps)

PAIRS = [TokenizedPair([1, 2, 3], [4, 5], [6], 0), TokenizedPair([7], [8, 9, 10], [11, 12], 3)]


def key_for(tokenizer, pairs=PAIRS, **overrides) -> dict:
    fields = dict(model="tiny-gpt2", checkpoint=None, is_lora_checkpoint=False, dtype="float32", tokenizer=tokenizer,
                  max_input_length=64, pairs=pairs)
    fields.update(overrides)
    return reference_cache_key(**fields)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    return model.eval(), tokenizer


def test_key_changes_with_every_input(tiny, tmp_path):
    _, tokenizer = tiny
    base = cache_path(tmp_path, key_for(tokenizer))
    assert base == cache_path(tmp_path, key_for(tokenizer))  # deterministic
    assert base.suffix == ".safetensors" and base.parent == tmp_path
    one_token_changed = [TokenizedPair([1, 2, 3], [4, 5], [7], 0), PAIRS[1]]
    variants = [key_for(tokenizer, pairs=one_token_changed), key_for(tokenizer, pairs=PAIRS[:1]),
                key_for(tokenizer, max_input_length=32), key_for(tokenizer, dtype="bfloat16"),
                key_for(tokenizer, model="tiny-llama"), key_for(tokenizer, checkpoint="some/hub-id")]
    paths = {cache_path(tmp_path, key) for key in variants}
    assert base not in paths and len(paths) == len(variants)


def test_checkpoint_fingerprint_follows_rewritten_files(tmp_path):
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"abc")
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    first = checkpoint_fingerprint(str(checkpoint))
    assert first == [["model.safetensors", 3, 1_000_000_000]]
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))  # a rerun rewrote the checkpoint
    assert checkpoint_fingerprint(str(checkpoint)) != first
    assert checkpoint_fingerprint(None) is None and checkpoint_fingerprint("org/model") == ["org/model"]


def test_pairs_fingerprint_depends_on_order_and_ids():
    assert pairs_fingerprint(PAIRS) != pairs_fingerprint(PAIRS[::-1])
    assert pairs_fingerprint(PAIRS) == pairs_fingerprint([TokenizedPair(*vars(p).values()) for p in PAIRS])


def test_save_load_round_trip_and_bad_entries(tmp_path):
    path = tmp_path / "entry.safetensors"
    assert load_cached_logps(path, 2) is None  # absent
    save_cached_logps(path, torch.tensor([-1.5, -2.5]), torch.tensor([-3.0, -4.0]), {"k": 1})
    chosen, rejected = load_cached_logps(path, 2)
    assert chosen.tolist() == [-1.5, -2.5] and rejected.tolist() == [-3.0, -4.0]
    assert load_cached_logps(path, 3) is None  # wrong length: recomputed, never trusted
    path.write_bytes(b"not a safetensors file")
    assert load_cached_logps(path, 2) is None
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_reference_logps_miss_then_hit(tiny, tmp_path):
    """A miss computes with the model and writes the entry; a hit returns the same numbers without touching
    the model (passing model=None would fail on any forward)."""
    model, tokenizer = tiny
    group, options = ProcessGroup(torch.device("cpu")), LogpsOptions()
    key = key_for(tokenizer)
    chosen, rejected, hit = reference_logps(model, PAIRS, options, group, tmp_path, key)
    assert not hit and cache_path(tmp_path, key).is_file()
    with torch.no_grad():
        expected = [pair_logps(model, pair) for pair in PAIRS]
    assert chosen.tolist() == [float(c) for c, _ in expected]
    assert rejected.tolist() == [float(r) for _, r in expected]
    cached_chosen, cached_rejected, hit = reference_logps(None, PAIRS, options, group, tmp_path, key)
    assert hit and torch.equal(cached_chosen, chosen) and torch.equal(cached_rejected, rejected)
    other_key = key_for(tokenizer, max_input_length=32)
    _, _, hit = reference_logps(model, PAIRS, options, group, tmp_path, other_key)
    assert not hit and len(list(Path(tmp_path).glob("*.safetensors"))) == 2
    _, _, hit = reference_logps(model, PAIRS, options, group, None, key)  # caching disabled
    assert not hit
