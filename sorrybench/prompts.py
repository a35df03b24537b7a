"""SORRY-Bench prompts: load the base prompts (local csv or Hub), subsample by category and count.

    prompts = load_sorrybench_prompts(num_prompts=20, categories=["1", "2"], seed=0)
    # -> [{"prompt_index": 3, "category": "1", "prompt": "..."}, ...]   (prompt_index = row of the source)
"""

from __future__ import annotations

import csv
import random
from typing import Sequence

from common.data_locations import find_local_data_file, is_hub_dataset_id, load_hub_dataset, locate_data_file

# The conventional local copy (found by the data-location rule: data_files/, then $LD_DATA_DIR) and the original
# (gated) Hub data set it is taken from.
PROMPTS_FILE_NAME = "data_files/sorrybench/sorry_bench_202406.csv"
HUB_PROMPTS_ID = "sorry-bench/sorry-bench-202406"


def default_prompts_source() -> str:
    """The local csv (`PROMPTS_FILE_NAME` by the data-location rule) when a place holds it, else the Hub id."""
    local = find_local_data_file(PROMPTS_FILE_NAME)
    return str(local) if local is not None else HUB_PROMPTS_ID


def _read_rows(source: str) -> list[dict]:
    """Rows with `category` and `prompt`, from a csv/jsonl file (data-location rule) or a Hub id.

    The Hub data set stores each prompt as `turns` (a one-element list) with a `prompt_style` column; only the
    "base" style is kept (the local csv holds the base prompts only).
    """
    if not is_hub_dataset_id(source):
        path = locate_data_file(source)  # DataNotFoundError names the places tried and how to get the file
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        from common.io_utils import read_jsonl

        return read_jsonl(path)
    rows = []
    for row in load_hub_dataset(source, split="train"):  # DataNotFoundError when offline or gated without login
        if row.get("prompt_style", "base") != "base":
            continue
        turns = row.get("turns")
        prompt = turns[0] if isinstance(turns, list) and turns else row.get("prompt")
        rows.append({"category": row["category"], "prompt": prompt})
    return rows


def load_sorrybench_prompts(source: str | None = None, *, num_prompts: int | None = None,
                            categories: Sequence[str] | None = None, seed: int = 0) -> list[dict]:
    """Load SORRY-Bench prompts.

    Args:
        source: csv/jsonl path with `category` and `prompt` columns, or a Hub id. None = `default_prompts_source()`.
        num_prompts: Keep this many prompts, drawn uniformly without replacement (`random.Random(seed).sample`)
            after the category filter and returned in source order; None = all.
        categories: Keep only these categories (compared as strings, e.g. "1".."45"); None = all.
        seed: Seed of the subsample.

    Returns:
        Records `{"prompt_index": row of the source (0-based), "category": str, "prompt": str}`.
    """
    source = source or default_prompts_source()
    rows = _read_rows(source)
    records = []
    for index, row in enumerate(rows):
        missing = [column for column in ("category", "prompt") if row.get(column) in (None, "")]
        if missing:
            raise ValueError(f"{source}, row {index}: missing {missing}; expected columns `category` and `prompt`")
        records.append({"prompt_index": index, "category": str(row["category"]), "prompt": str(row["prompt"])})
    if categories is not None:
        wanted = {str(category) for category in categories}
        unknown = wanted - {record["category"] for record in records}
        if unknown:
            raise ValueError(f"categories {sorted(unknown)} do not occur in {source}")
        records = [record for record in records if record["category"] in wanted]
    if num_prompts is not None:
        if not 0 < num_prompts <= len(records):
            raise ValueError(f"num_prompts must be in [1, {len(records)}] (prompts left after the category "
                             f"filter), got {num_prompts}")
        keep = set(random.Random(seed).sample(range(len(records)), num_prompts))
        records = [record for i, record in enumerate(records) if i in keep]
    return records
