"""Refusal rates: judge generated responses (resumably) and aggregate overall, per split and per category.

    prompts = load_dataset_prompts("data_files/sorrybench/smollm2-135m-instruct")   # train.jsonl + test.jsonl queries
    rates = evaluate_refusal_rate(model, tokenizer, prompts, judge, out_dir, settings, model_name="...")
    print(format_comparison_table({"base": rates, "dpo": other_rates}))

Refusal rate = (# responses judged "refusal") / (# responses), as a fraction in [0, 1]; "unknown" responses
count in the denominator (they are not refusals) and are reported separately.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from common.data_locations import find_local_data_file
from common.io_utils import atomic_write_json, read_jsonl
from sorrybench.generation import GenerationSettings, generate_for_prompts
from sorrybench.judges import REFUSAL, UNKNOWN, Judge
from sorrybench.resumable import process_resumably

SPLITS = ("train", "test")


def judge_generations(records: Sequence[dict], judge: Judge, output_path: Path, *, key: str = "prompt_index",
                      batch_size: int = 16, desc: str = "judging") -> list[dict]:
    """Judge every response of every record, resumably (one JSONL record per prompt in `output_path`).

    Args:
        records: Generation records with `key`, `prompt` and `responses` (list of str).
        judge: The judge; its `name` is stored with the results (a rerun with another judge raises).
        batch_size: Prompts per judge call.

    Returns:
        The records extended with `labels`, `scores` and `judge_raw` (lists aligned with `responses`).
    """

    def process_batch(batch: list[dict]) -> list[dict]:
        prompts = [record["prompt"] for record in batch for _ in record["responses"]]
        responses = [response for record in batch for response in record["responses"]]
        results = iter(judge(prompts, responses))
        judged = []
        for record in batch:
            verdicts = [next(results) for _ in record["responses"]]
            judged.append({**record, "labels": [v.label for v in verdicts], "scores": [v.score for v in verdicts],
                           "judge_raw": [v.raw for v in verdicts]})
        return judged

    return process_resumably(records, key=key, output_path=output_path, process_batch=process_batch,
                             batch_size=batch_size, settings={"judge": judge.name}, desc=desc)


def _rate(refusals: int, total: int) -> dict:
    return {"refusal_rate": refusals / total if total else None, "num_refusals": refusals, "num_responses": total}


def _category_order(category: str) -> tuple:
    """Numeric categories ("1".."45") in numeric order, then any others alphabetically."""
    return (0, int(category), "") if category.isdigit() else (1, 0, category)


def compute_refusal_rates(judged: Sequence[dict]) -> dict:
    """Aggregate judged records (with `labels`, `category` and optionally `split`).

    Returns:
        {"overall": {refusal_rate, num_refusals, num_responses, num_unknown}, "per_split": {split: {...}},
         "per_category": {category: {...}}, "per_split_category": {split: {category: {...}}}}.
        Example: labels [refusal, compliance] and [refusal, unknown] -> overall 2 / 4 = 0.5, num_unknown 1.
    """
    overall, unknown = [0, 0], 0  # [refusals, responses]
    per_split: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_split_category: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for record in judged:
        split, category = record.get("split"), str(record["category"])
        counters = [overall, per_category[category]]
        if split is not None:
            counters += [per_split[split], per_split_category[split][category]]
        for label in record["labels"]:
            unknown += int(label == UNKNOWN)
            for counter in counters:
                counter[0] += int(label == REFUSAL)
                counter[1] += 1

    def by_category(counts: dict[str, list[int]]) -> dict[str, dict]:
        return {c: _rate(*counts[c]) for c in sorted(counts, key=_category_order)}

    return {"overall": {**_rate(*overall), "num_unknown": unknown},
            "per_split": {split: _rate(*per_split[split]) for split in sorted(per_split)},
            "per_category": by_category(per_category),
            "per_split_category": {split: by_category(per_split_category[split])
                                   for split in sorted(per_split_category)}}


def load_split_prompts(paths: dict[str, str | Path]) -> list[dict]:
    """The queries of SORRY-Bench preference files, by split name (e.g. {"train": ".../train.jsonl"}).

    Returns:
        Records `{"example_id": "<split>/<row>", "split", "prompt_index", "category", "prompt"}`.
    """
    prompts = []
    for split, name in paths.items():
        path = find_local_data_file(name)  # the data-location rule: as given, data_files/, $LD_DATA_DIR
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{name} not found; expected a {split} file written by "
                                    "sorrybench_create_preferences_dataset.py")
        for row_number, row in enumerate(read_jsonl(path)):
            prompts.append({"example_id": f"{split}/{row_number}", "split": split,
                            "prompt_index": row.get("prompt_index", row_number), "category": str(row["category"]),
                            "prompt": row["query"]})
    return prompts


def load_dataset_prompts(dataset_path: str | Path, splits: Sequence[str] = SPLITS) -> list[dict]:
    """`load_split_prompts` for the `<split>.jsonl` files of a data set directory."""
    return load_split_prompts({split: Path(dataset_path) / f"{split}.jsonl" for split in splits})


def evaluate_refusal_rate(model, tokenizer, prompts: Sequence[dict], judge: Judge, output_dir: Path,
                          settings: GenerationSettings, *, model_name: str, judge_batch_size: int = 16) -> dict:
    """Generate for every prompt, judge, aggregate; write `generations.jsonl`, `judgments.jsonl` and
    `refusal_rates.json` into `output_dir` (both JSONL files resumable).

    Args:
        prompts: Records from `load_split_prompts` / `load_dataset_prompts` (key `example_id`).
        settings: Sampling settings (num_responses responses per prompt).
        model_name: Recorded in the settings files and in `refusal_rates.json`.

    Returns:
        `compute_refusal_rates(...)` plus `model`, `judge` and `generation` (the settings).
    """
    output_dir = Path(output_dir)
    generations = generate_for_prompts(model, tokenizer, prompts, output_dir / "generations.jsonl", settings,
                                       model_name=model_name, key="example_id", desc=f"generating ({model_name})")
    judged = judge_generations(generations, judge, output_dir / "judgments.jsonl", key="example_id",
                               batch_size=judge_batch_size, desc=f"judging ({model_name})")
    rates = {"model": model_name, "judge": judge.name, "generation": asdict(settings),
             **compute_refusal_rates(judged)}
    atomic_write_json(output_dir / "refusal_rates.json", rates)
    return rates


def _percent(entry: dict | None) -> str:
    if not entry or entry["refusal_rate"] is None:
        return "-"
    return f"{100 * entry['refusal_rate']:.1f}% ({entry['num_refusals']}/{entry['num_responses']})"


def format_comparison_table(rates_by_model: dict[str, dict], *, per_category: bool = False) -> str:
    """A plain-text table: one row per model; columns overall, train, test (rate in % and counts).
    With `per_category`, a second table with one column per model and one row per category."""
    header = ["model", "overall", *SPLITS]
    rows = [[name, _percent(rates["overall"]), *(_percent(rates["per_split"].get(s)) for s in SPLITS)]
            for name, rates in rates_by_model.items()]
    lines = _align([header, *rows])
    if per_category:
        categories = list(dict.fromkeys(c for rates in rates_by_model.values() for c in rates["per_category"]))
        table = [["category", *rates_by_model]]
        table += [[c, *(_percent(r["per_category"].get(c)) for r in rates_by_model.values())] for c in categories]
        lines += [""] + _align(table)
    return "\n".join(lines)


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
