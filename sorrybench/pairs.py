"""Preference pairs from two judged responses per prompt, and the train/test split: the reference rule
(princeton-nlp/unintentional-unalignment, `sorrybench_create_preferences_dataset.py`). No model is loaded here.

Scores. Our judges return a refusal score r (higher = more refusal-like, `sorrybench.judges.JudgeResult`); the
reference stores the judge's compliance score s = 1 - r (official judge: 1 = complies, 0 = refuses). Pair files
hold the reference's `chosen_score` / `rejected_score` = s (None when the judge could not decide).

Pair rule, for the two responses of every prompt (no prompt is dropped):
    - both scores known and different: chosen = the response with the lower compliance score (the refusal);
    - a tie (equal scores) or an unknown score: at random, with one draw u = rng.random() per such prompt, in
      prompt order: rejected = response 2 if u < 0.5 else response 1 (the reference's
      `rejected = int(random.random() < 0.5) + 1`); `decided_by` "random";
    - with a comparator (`--use_rm`: PairRM or a reward model), every pair decided at random is then re-labelled:
      chosen = the response the comparator prefers; `decided_by` "reward_model".
The reference seeds Python's global `random` with `--random_seed`; `random.Random(seed)` gives the same stream, so
the tie draws (and, after them, the gold draws of `sorrybench.gold`) are the reference's for the same judged
responses. Deviation kept on purpose: the reference records `chosen_score` = the second response's score in every
random assignment (a slip) and re-labels with the reward model only pairs whose two recorded scores are equal; here
the scores are recorded as they are and every randomly assigned pair (ties and unknowns) is re-labelled.

Split (`split_train_test`): perm = torch.randperm(n) drawn from `torch.Generator().manual_seed(seed)` (seed > 0;
otherwise unseeded), n_test = int(n * test_ratio) (rounded down), test = pairs perm[:n_test], train = perm[n_test:],
both in permutation order, as the reference selects them. (The reference draws from the global torch generator
after sampling the responses, so its split cannot be replayed exactly; a dedicated generator makes ours repeatable.)
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from sorrybench.judges import REFUSAL

DECIDED_BY_JUDGE = "judge"
DECIDED_BY_RANDOM = "random"
DECIDED_BY_REWARD_MODEL = "reward_model"

# (queries, first responses, second responses) -> for each pair, whether the first response is preferred
PairComparator = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[bool]]


def compliance_score(refusal_score: float | None) -> float | None:
    """The reference's judge score s = 1 - r for our refusal score r (None stays None). Example: 1.0 -> 0.0."""
    return None if refusal_score is None else 1.0 - refusal_score


def question_id_of(prompt_index: int) -> int:
    """SORRY-Bench `question_id` of a base prompt: its 0-based row + 1 (row 0 -> question 1)."""
    return int(prompt_index) + 1


def pair_two_responses(record: dict, rng: random.Random) -> dict:
    """The preference pair of one judged prompt by the reference rule (module docstring).

    Args:
        record: `prompt_index`, `category`, `prompt`, `responses` (exactly 2), `labels` and `scores` (our refusal
            scores or None; same length).
        rng: Source of the tie draws; one `rng.random()` is consumed iff the pair is decided at random.

    Returns:
        The pair in the reference schema (`question_id`, `category`, `prompt_style`, `query`, `chosen`, `rejected`,
        `chosen_score`, `rejected_score`) plus `prompt_index`, `chosen_label`, `rejected_label`, `pair_type`
        ("<chosen label>-<rejected label>"), `decided_by`, `chosen_response_index`, `rejected_response_index`.
    """
    responses, labels, scores = record["responses"], record["labels"], record["scores"]
    if not len(responses) == len(labels) == len(scores) == 2:
        raise ValueError(f"prompt {record.get('prompt_index')}: the reference pairing needs exactly 2 judged "
                         f"responses, got {len(responses)} responses, {len(labels)} labels, {len(scores)} scores")
    first, second = (compliance_score(score) for score in scores)
    if first is None or second is None or first == second:
        rejected = int(rng.random() < 0.5)
        chosen, decided_by = 1 - rejected, DECIDED_BY_RANDOM
    else:
        chosen = 1 if first > second else 0
        rejected, decided_by = 1 - chosen, DECIDED_BY_JUDGE
    return {
        "question_id": question_id_of(record["prompt_index"]), "category": str(record["category"]),
        "prompt_style": "base", "query": record["prompt"],
        "chosen": responses[chosen], "rejected": responses[rejected],
        "chosen_score": compliance_score(scores[chosen]), "rejected_score": compliance_score(scores[rejected]),
        "prompt_index": record["prompt_index"], "chosen_label": labels[chosen], "rejected_label": labels[rejected],
        "pair_type": f"{labels[chosen]}-{labels[rejected]}", "decided_by": decided_by,
        "chosen_response_index": chosen, "rejected_response_index": rejected,
    }


def _swap(pair: dict) -> None:
    for a, b in (("chosen", "rejected"), ("chosen_score", "rejected_score"), ("chosen_label", "rejected_label"),
                 ("chosen_response_index", "rejected_response_index")):
        pair[a], pair[b] = pair[b], pair[a]
    pair["pair_type"] = f"{pair['chosen_label']}-{pair['rejected_label']}"


def relabel_random_pairs(pairs: Sequence[dict], compare: PairComparator) -> int:
    """Re-label, in place, every pair decided at random: chosen = the response `compare` prefers.

    `compare(queries, chosen, rejected)` gets the current (random) order; where it answers False the two responses
    swap. Every such pair gets `decided_by` "reward_model". Returns how many pairs were re-labelled.
    """
    tied = [pair for pair in pairs if pair["decided_by"] == DECIDED_BY_RANDOM]
    if not tied:
        return 0
    first_better = compare([p["query"] for p in tied], [p["chosen"] for p in tied], [p["rejected"] for p in tied])
    if len(first_better) != len(tied):
        raise RuntimeError(f"comparator returned {len(first_better)} results for {len(tied)} pairs")
    for pair, keep in zip(tied, first_better):
        if not keep:
            _swap(pair)
        pair["decided_by"] = DECIDED_BY_REWARD_MODEL
    return len(tied)


def count_pairs_with_refusal_chosen(pairs: Sequence[dict]) -> int:
    """How many pairs prefer a response the judge labelled a refusal."""
    return sum(pair["chosen_label"] == REFUSAL for pair in pairs)


def check_test_ratio(test_ratio: float) -> None:
    """Raise ValueError unless 0 <= test_ratio < 1 (the share of pairs in test.jsonl)."""
    if not isinstance(test_ratio, (int, float)) or not 0 <= test_ratio < 1:
        raise ValueError(f"test ratio must be in [0, 1) (e.g. 0.15 = 15% of the pairs in test.jsonl), got {test_ratio}")


def split_train_test(pairs: Sequence[dict], *, test_ratio: float = 0.15,
                     seed: int = 128) -> tuple[list[dict], list[dict]]:
    """(train, test) by the reference rule (module docstring). Example: n = 10, ratio 0.15 -> int(1.5) = 1 test pair."""
    check_test_ratio(test_ratio)
    n = len(pairs)
    generator = torch.Generator().manual_seed(seed) if seed > 0 else None
    perm = torch.randperm(n, generator=generator).tolist()
    n_test = int(n * test_ratio)
    return [pairs[i] for i in perm[n_test:]], [pairs[i] for i in perm[:n_test]]

