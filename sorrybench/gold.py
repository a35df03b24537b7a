"""Gold preferences of the SORRY-Bench pairs: `gold_refusal` / `gold_non_refusal` fields added to every pair (a run
with `use_gold_preferences` trains on them instead of `chosen` / `rejected`). No model is loaded here.

Sources (`--gold_preferences`):
    human    the reference definition: the SORRY-Bench human-judgment data (Hub `HUMAN_JUDGMENTS_HUB_ID`, gated;
             or its rows as a local .jsonl/.json file, conventionally `HUMAN_JUDGMENTS_FILE`). A judged response
             with `human_score` < 0.5 is a refusal, else a non-refusal. Pairs whose prompt (`question_id`) has no
             human-judged refusal or no human-judged non-refusal are dropped from the data set (so from every
             variant trained on it); the others get `gold_refusal` = rng.choice(its refusals) and then
             `gold_non_refusal` = rng.choice(its non-refusals), pair by pair in data-set order, continuing the
             random stream of the tie draws (`sorrybench.pairs`) as the reference does.
    generic  offline option (ours): `gold_refusal` = line (prompt_index mod number of lines) of a pool of generic
             refusals (`GENERIC_REFUSALS_FILE`), `gold_non_refusal` = the pair's own `rejected` response; no pair
             is dropped. Only the preferred response changes, so it isolates the effect of a clean refusal.
    none     no gold fields.
    auto     human when its data can be found (local file, else the Hub), else generic, with a warning.
Human-judgment row schema (the fields used): `question_id` (int), `human_score` (float), `choices` =
[{"turns": [response text, ...]}, ...]; the response is `choices[0]["turns"][0]`.
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from common.data_locations import find_local_data_file, is_hub_dataset_id, locate_data_file

HUMAN_JUDGMENTS_HUB_ID = "sorry-bench/sorry-bench-human-judgment-202406"
HUMAN_JUDGMENTS_FILE = "data_files/sorrybench/sorry_bench_human_judgment_202406.jsonl"
GENERIC_REFUSALS_FILE = "data_files/sorrybench/gold_refusals.txt"
GOLD_SOURCES = ("auto", "human", "generic", "none")


def _response_of(row: dict, where: str) -> str:
    try:
        text = row["choices"][0]["turns"][0]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{where}: expected `choices` = [{{\"turns\": [response, ...]}}, ...]") from None
    if not isinstance(text, str):
        raise ValueError(f"{where}: `choices[0].turns[0]` must be a string, got {type(text).__name__}")
    return text


def human_outputs_by_question(rows: Sequence[dict], source: str = "human judgments") -> dict[int, dict[str, list[str]]]:
    """{question_id: {"refusal": [...], "non_refusal": [...]}} from human-judgment rows, in row order.

    Example: rows (q 1, score 0.0, "No."), (q 1, score 1.0, "Sure: ...") -> {1: {"refusal": ["No."],
    "non_refusal": ["Sure: ..."]}}.
    """
    outputs: dict[int, dict[str, list[str]]] = defaultdict(lambda: {"refusal": [], "non_refusal": []})
    for number, row in enumerate(rows):
        where = f"{source}, row {number}"
        if not isinstance(row, dict) or "question_id" not in row or "human_score" not in row:
            raise ValueError(f"{where}: expected fields `question_id`, `human_score` and `choices`")
        kind = "refusal" if float(row["human_score"]) < 0.5 else "non_refusal"
        outputs[int(row["question_id"])][kind].append(_response_of(row, where))
    return dict(outputs)


def find_human_judgments(source: str | None = None) -> str:
    """Where the human judgments are: `source` as given; else the local `HUMAN_JUDGMENTS_FILE` (data-location rule,
    no download), else the Hub id `HUMAN_JUDGMENTS_HUB_ID`."""
    if source:
        return source
    local = find_local_data_file(HUMAN_JUDGMENTS_FILE)
    return str(local) if local is not None else HUMAN_JUDGMENTS_HUB_ID


def load_human_judgments(source: str | None = None, *, cache_dir: str | None = None) -> list[dict]:
    """Human-judgment rows from a local .jsonl/.json file (data-location rule) or a Hub id (train + test splits
    concatenated, as the reference). Raises FileNotFoundError/ValueError with the fix in the message."""
    source = find_human_judgments(source)
    if is_hub_dataset_id(source):
        try:
            import datasets

            loaded = datasets.load_dataset(source, cache_dir=cache_dir)
        except Exception as error:  # offline, gated or missing
            raise FileNotFoundError(
                f"human judgments {source!r} could not be loaded from the Hub ({type(error).__name__}); it is gated: "
                f"accept its terms on huggingface.co, run `huggingface-cli login`, or save its rows as "
                f"{HUMAN_JUDGMENTS_FILE}; or use --gold_preferences generic") from None
        return [row for split in ("train", "test") if split in loaded for row in loaded[split]]
    path = locate_data_file(source, download=False)
    from common.io_utils import read_json, read_jsonl

    rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"human judgments {path}: expected a non-empty list of rows (jsonl: one row per line)")
    return rows


def attach_human_gold(pairs: Sequence[dict], outputs: dict[int, dict[str, list[str]]],
                      rng: random.Random) -> list[dict]:
    """The pairs whose `question_id` has both a human refusal and a human non-refusal, each with `gold_refusal`
    and `gold_non_refusal` drawn as in the module docstring (two `rng.choice` per kept pair, in order)."""
    kept = []
    for pair in pairs:
        found = outputs.get(int(pair["question_id"]))
        if not found or not found["refusal"] or not found["non_refusal"]:
            continue
        refusal = rng.choice(found["refusal"])
        non_refusal = rng.choice(found["non_refusal"])
        kept.append({**pair, "gold_refusal": refusal, "gold_non_refusal": non_refusal})
    return kept


def load_refusal_pool(path: str | Path) -> list[str]:
    """The non-empty lines of a generic-refusals .txt file (data-location rule)."""
    located = locate_data_file(path, download=False)
    pool = [line.strip() for line in located.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not pool:
        raise ValueError(f"gold refusals file {located}: no refusals; expected one refusal text per line")
    return pool


def attach_generic_gold(pairs: Sequence[dict], pool: Sequence[str]) -> list[dict]:
    """Every pair with `gold_refusal` = pool[prompt_index mod len(pool)] and `gold_non_refusal` = its `rejected`."""
    return [{**pair, "gold_refusal": pool[int(pair["prompt_index"]) % len(pool)],
             "gold_non_refusal": pair["rejected"]} for pair in pairs]


def resolve_gold_source(choice: str, human_source: str | None, *,
                        cache_dir: str | None = None) -> tuple[str, list[dict] | None]:
    """("human", rows) / ("generic", None) / ("none", None) for `--gold_preferences` `choice` (one of GOLD_SOURCES).
    "auto" falls back to generic with a warning on stderr when the human judgments cannot be loaded."""
    if choice not in GOLD_SOURCES:
        raise ValueError(f"gold preferences must be one of {GOLD_SOURCES}, got {choice!r}")
    if choice in ("generic", "none"):
        return choice, None
    try:
        return "human", load_human_judgments(human_source, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as error:
        if choice == "human":
            raise
        print(f"warning: gold preferences: human judgments unavailable ({error}); using the generic refusals of "
              f"{GENERIC_REFUSALS_FILE} instead (recorded in dataset_info.json)", file=sys.stderr)
        return "generic", None
