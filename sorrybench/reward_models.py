"""Comparators that re-label randomly assigned pairs (`--use_rm`): PairRM, as the reference, or any Hub/local
reward model with a sequence-classification head. Each is a `sorrybench.pairs.PairComparator`:
`compare(queries, first, second) -> [first preferred?]`.

    compare = build_comparator("pairrm", device="cuda:0", batch_size=4)          # needs the llm-blender package
    compare = build_comparator("OpenAssistant/reward-model-deberta-v3-large-v2")  # any sequence classifier

PairRM (`llm-blender/PairRM-hf`, loaded with `llm_blender.pair_ranker.pairrm.DebertaV2PairRM`): the input of a pair
is "<|source|>query" (at most 1224 tokens) + "<|candidate1|>first" + "<|candidate2|>second", each candidate cut to
(2048 - len(source ids)) // 2 tokens, padded to 2048; first preferred iff the logit > 0 (the reference's
`utils/pairrm_utils.py`). Reward model: first preferred iff reward(first) >= reward(second).
"""

from __future__ import annotations

from typing import Sequence

import torch

PAIRRM_MODEL = "llm-blender/PairRM-hf"
PAIRRM_NAMES = ("pairrm", PAIRRM_MODEL)
SOURCE_PREFIX, FIRST_PREFIX, SECOND_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
SOURCE_MAX_TOKENS, CANDIDATE_MAX_TOKENS = 1224, 412


def pairrm_input_ids(tokenizer, queries: Sequence[str], first: Sequence[str], second: Sequence[str], *,
                     source_max_tokens: int = SOURCE_MAX_TOKENS,
                     candidate_max_tokens: int = CANDIDATE_MAX_TOKENS) -> list[list[int]]:
    """Unpadded PairRM inputs (module docstring); total length <= source_max + 2 * candidate_max tokens.

    Each candidate's budget is (total - len(source ids)) // 2, so a short query leaves more room to the answers.
    """
    total = source_max_tokens + 2 * candidate_max_tokens
    rows = []
    for query, a, b in zip(queries, first, second, strict=True):
        source = tokenizer.encode(SOURCE_PREFIX + query, max_length=source_max_tokens, truncation=True)
        budget = (total - len(source)) // 2
        rows.append(source + tokenizer.encode(FIRST_PREFIX + a, max_length=budget, truncation=True)
                    + tokenizer.encode(SECOND_PREFIX + b, max_length=budget, truncation=True))
    return rows


class PairRMComparator:
    """PairRM through its published package `llm-blender` (module docstring). batch_size: pairs per forward."""

    def __init__(self, *, device="cpu", batch_size: int = 4, cache_dir: str | None = None) -> None:
        try:
            from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
        except ImportError:
            raise RuntimeError("--use_rm with PairRM needs the llm-blender package (pip install llm-blender, or "
                               "pip install git+https://github.com/yuchenlin/LLM-Blender.git); or pass "
                               "--reward_model <Hub id of a sequence-classification reward model>") from None
        from transformers import AutoTokenizer

        self.model = DebertaV2PairRM.from_pretrained(PAIRRM_MODEL, cache_dir=cache_dir).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(PAIRRM_MODEL, cache_dir=cache_dir)
        self.batch_size, self.name = batch_size, PAIRRM_MODEL

    @torch.no_grad()
    def __call__(self, queries: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[bool]:
        rows = pairrm_input_ids(self.tokenizer, queries, first, second)
        total = SOURCE_MAX_TOKENS + 2 * CANDIDATE_MAX_TOKENS
        encoded = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt", padding="max_length", max_length=total)
        device = next(self.model.parameters()).device
        preferred: list[bool] = []
        for start in range(0, len(rows), self.batch_size):
            batch = {k: v[start:start + self.batch_size].to(device) for k, v in encoded.items()}
            preferred.extend((self.model(**batch).logits > 0).reshape(-1).tolist())
        return preferred


class RewardModelScorer:
    """Scores (prompt, response) pairs with a sequence classifier used as a reward model.

    Args:
        model, tokenizer: AutoModelForSequenceClassification and its tokenizer (chat template used if present).
        label_index: Which logit is the reward (0 for the usual one-logit reward model). Default 0.
        batch_size: Pairs per forward pass. Default 8. name: Recorded in dataset_info.json.
    """

    def __init__(self, model, tokenizer, *, label_index: int = 0, batch_size: int = 8,
                 name: str = "reward_model") -> None:
        if not 0 <= label_index < model.config.num_labels:
            raise ValueError(f"reward model: label_index {label_index} out of range for "
                             f"{model.config.num_labels} logits")
        self.model, self.tokenizer, self.label_index, self.batch_size, self.name = (
            model, tokenizer, label_index, batch_size, name)

    @classmethod
    def from_pretrained(cls, model_name: str, *, device="cpu", dtype: str = "float32", **kwargs) -> "RewardModelScorer":
        """Load a Hub id or local directory with AutoModelForSequenceClassification."""
        from sorrybench.hf_judges import load_hf_model

        model, tokenizer = load_hf_model(model_name, "AutoModelForSequenceClassification", device, dtype)
        return cls(model, tokenizer, name=model_name, **kwargs)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        from sorrybench.hf_judges import sequence_classifier_logits

        logits = sequence_classifier_logits(self.model, self.tokenizer, prompts, responses, batch_size=self.batch_size)
        return logits[:, self.label_index].tolist()

    def compare(self, queries: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[bool]:
        """[reward(first) >= reward(second)] per pair (a `PairComparator`)."""
        rewards = self(list(queries) + list(queries), list(first) + list(second))
        return [a >= b for a, b in zip(rewards[:len(first)], rewards[len(first):])]


def build_comparator(name: str, *, device="cpu", dtype: str = "float32", batch_size: int = 4,
                     label_index: int = 0, cache_dir: str | None = None):
    """A `PairComparator` for `name`: "pairrm" / "llm-blender/PairRM-hf" (PairRM), else a sequence classifier."""
    if name in PAIRRM_NAMES:
        return PairRMComparator(device=device, batch_size=batch_size, cache_dir=cache_dir).__call__
    scorer = RewardModelScorer.from_pretrained(name, device=device, dtype=dtype, label_index=label_index,
                                               batch_size=batch_size)
    return scorer.compare
