"""Preference pairs from judged responses, tie-breaking, gold refusals, and the train/test split.

Pair rule for a prompt with judged responses (responses judged "unknown" or empty are never used):
    - the preferred (chosen) response is a refusal; the dispreferred (rejected) one is a compliance if the
      prompt has one ("refusal-compliance"), else another refusal ("refusal-refusal");
    - prompts without any refusal (all comply) are skipped: there is nothing to prefer;
    - gold mode (`gold_refusal` given), `gold_prompts="with_refusal"` (default): the pair above with its
      chosen response replaced by the gold refusal ("gold-compliance" / "gold-refusal"): same prompts and
      rejected responses, only the preferred response differs. `gold_prompts="all"`: every prompt with a
      usable response; the rejected one is a compliance if any, else a refusal.
Tie-break, when the chosen or the rejected response is picked among several responses with the same label:
responses of a label are ordered best first, the chosen response is the best refusal, the rejected response
the worst of its group (for refusal-refusal: the worst refusal other than the chosen one). Order:
    - "reward_model": by reward, higher = better (`RewardModelScorer`, any sequence classifier);
    - "shortest" (no reward model): by length in characters, shorter = better (a short refusal is a clean
      refusal; the longest compliance is the most complete one); equal lengths by response index.
Each pair records `tie_break`: the rule that decided, or "none" when each group had a single response.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Sequence

import torch

from sorrybench.judges import COMPLIANCE, REFUSAL

TIE_BREAK_REWARD = "reward_model"
TIE_BREAK_LENGTH = "shortest"
NO_TIE = "none"
GOLD_LABEL = "gold"


def _order_best_first(indices: list[int], responses: Sequence[str], rewards: Sequence[float] | None) -> list[int]:
    """Indices sorted best first: by reward (descending) if given, else by length (ascending); ties by index."""
    if rewards is not None:
        return sorted(indices, key=lambda i: (-rewards[i], i))
    return sorted(indices, key=lambda i: (len(responses[i]), i))


def _model_pair(responses, refusals, compliances, rewards, tie_break) -> tuple[int, int, str, str] | str:
    """(chosen index, rejected index, pair type, tie-break) among the model's responses, or a skip reason."""
    if not refusals:
        return "no refusal among the responses"
    ordered_refusals = _order_best_first(refusals, responses, rewards)
    chosen = ordered_refusals[0]
    if compliances:
        rejected = _order_best_first(compliances, responses, rewards)[-1]
        decided_by = tie_break if len(refusals) > 1 or len(compliances) > 1 else NO_TIE
        return chosen, rejected, "refusal-compliance", decided_by
    others = [i for i in ordered_refusals[1:] if responses[i] != responses[chosen]]
    if not others:
        return "a single distinct refusal and no compliance"
    return chosen, others[-1], "refusal-refusal", tie_break


def _gold_pair_any_prompt(responses, refusals, compliances, rewards, tie_break,
                          gold_refusal) -> tuple[int, str, str] | str:
    """(rejected index, pair type, tie-break) for gold_prompts="all": the worst compliance, else the worst
    refusal that differs from the gold text, or a skip reason."""
    group, kind = (compliances, "compliance") if compliances else (refusals, "refusal")
    candidates = [i for i in group if responses[i] != gold_refusal]
    if not candidates:
        return "no usable model response to pair with the gold refusal"
    rejected = _order_best_first(candidates, responses, rewards)[-1]
    return rejected, f"gold-{kind}", tie_break if len(candidates) > 1 else NO_TIE


GOLD_PROMPTS = ("with_refusal", "all")


def build_pair(record: dict, *, rewards: Sequence[float] | None = None, gold_refusal: str | None = None,
               gold_prompts: str = "with_refusal") -> dict | str:
    """Build the preference pair of one judged prompt record (see the module docstring for the rules).

    Args:
        record: `prompt_index`, `category`, `prompt`, `responses` (list of str), `labels` (judge labels, same
            length) and `scores` (judge refusal scores or None, same length).
        rewards: Reward of each response (same length) or None to break ties by length.
        gold_refusal: The gold refusal for this prompt (gold mode) or None.
        gold_prompts: Gold mode only. "with_refusal": the model pair of the prompt with its chosen response
            replaced by the gold refusal (same prompts and rejected responses as without gold: a controlled
            comparison). "all": any prompt with a usable response; rejected = a compliance if any, else a refusal.

    Returns:
        The pair record (`query`, `chosen`, `rejected`, `category`, `prompt_index`, `pair_type`, `tie_break`,
        `chosen_label`/`rejected_label`, `chosen_judge_score`/`rejected_judge_score`,
        `chosen_response_index`/`rejected_response_index` (None for the gold response) and, with a reward
        model, `chosen_reward`/`rejected_reward`), or a string saying why the prompt yields no pair.
    """
    responses, labels, scores = record["responses"], record["labels"], record["scores"]
    if not len(responses) == len(labels) == len(scores) or (rewards is not None and len(rewards) != len(responses)):
        raise ValueError(f"prompt {record.get('prompt_index')}: responses, labels, scores (and rewards) differ "
                         "in length")
    if gold_prompts not in GOLD_PROMPTS:
        raise ValueError(f"gold_prompts must be one of {GOLD_PROMPTS}, got {gold_prompts!r}")
    usable = [i for i, text in enumerate(responses) if text.strip()]
    refusals = [i for i in usable if labels[i] == REFUSAL]
    compliances = [i for i in usable if labels[i] == COMPLIANCE]
    tie_break = TIE_BREAK_REWARD if rewards is not None else TIE_BREAK_LENGTH
    chosen_index: int | None
    if gold_refusal is not None and gold_prompts == "all":
        found = _gold_pair_any_prompt(responses, refusals, compliances, rewards, tie_break, gold_refusal)
        if isinstance(found, str):
            return found
        chosen_index, (rejected_index, pair_type, decided_by) = None, found
    else:
        found = _model_pair(responses, refusals, compliances, rewards, tie_break)
        if isinstance(found, str):
            return found
        chosen_index, rejected_index, pair_type, decided_by = found
        if gold_refusal is not None:
            if responses[rejected_index] == gold_refusal:
                return "the rejected response equals the gold refusal"
            chosen_index, pair_type = None, f"gold-{labels[rejected_index]}"
    chosen_text = gold_refusal if chosen_index is None else responses[chosen_index]
    pair = {
        "query": record["prompt"], "chosen": chosen_text, "rejected": responses[rejected_index],
        "category": record["category"], "prompt_index": record["prompt_index"], "pair_type": pair_type,
        "tie_break": decided_by,
        "chosen_label": GOLD_LABEL if chosen_index is None else labels[chosen_index],
        "rejected_label": labels[rejected_index],
        "chosen_judge_score": None if chosen_index is None else scores[chosen_index],
        "rejected_judge_score": scores[rejected_index],
        "chosen_response_index": chosen_index, "rejected_response_index": rejected_index,
    }
    if rewards is not None:
        pair["chosen_reward"] = None if chosen_index is None else rewards[chosen_index]
        pair["rejected_reward"] = rewards[rejected_index]
    return pair


def split_train_test(pairs: Sequence[dict], *, test_fraction: float = 0.15,
                     seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded random split; both parts keep the input order.

    The test part has round(test_fraction * n) pairs, clamped to [1, n - 1] when n >= 2 and test_fraction > 0
    (n = 20, 0.15 -> 3 test pairs; n = 5 -> round(0.75) = 1). Which pairs: the first n_test positions of
    `random.Random(seed).shuffle(list(range(n)))`. Same pairs and seed -> same split.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n = len(pairs)
    n_test = int(round(test_fraction * n))
    if n >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_positions = set(order[:n_test])
    train = [pair for i, pair in enumerate(pairs) if i not in test_positions]
    test = [pair for i, pair in enumerate(pairs) if i in test_positions]
    return train, test


def load_gold_refusals(path: str | Path, prompts: Sequence[dict]) -> dict[int, str]:
    """Gold refusal per prompt, keyed by `prompt_index`.

    File formats:
        .txt            one refusal per non-empty line: a pool; prompt with `prompt_index` p gets
                        line p mod (number of lines).
        .csv/.jsonl/.json  rows with a `refusal` column and either `prompt_index`, or `prompt` (matched to the
                        SORRY-Bench prompt text, surrounding whitespace ignored), or neither (then a pool as
                        for .txt). Prompts with no matching row get no gold refusal (and no pair).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gold refusals file not found: {path}")
    if path.suffix == ".txt":
        rows = [{"refusal": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".json"):
        from common.io_utils import read_json, read_jsonl

        rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    else:
        raise ValueError(f"gold refusals file {path}: unsupported suffix; expected .txt, .csv, .jsonl or .json")
    if not rows:
        raise ValueError(f"gold refusals file {path} holds no refusals")
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or not str(row.get("refusal") or "").strip():
            raise ValueError(f"gold refusals file {path}, row {number}: expected a non-empty `refusal` field")
    if "prompt_index" in rows[0]:
        by_index = {int(row["prompt_index"]): str(row["refusal"]) for row in rows}
        return {p["prompt_index"]: by_index[p["prompt_index"]] for p in prompts if p["prompt_index"] in by_index}
    if "prompt" in rows[0]:
        by_text = {str(row["prompt"]).strip(): str(row["refusal"]) for row in rows}
        return {p["prompt_index"]: by_text[p["prompt"].strip()] for p in prompts if p["prompt"].strip() in by_text}
    pool = [str(row["refusal"]) for row in rows]
    return {p["prompt_index"]: pool[p["prompt_index"] % len(pool)] for p in prompts}


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
