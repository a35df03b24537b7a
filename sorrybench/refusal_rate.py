"""Refusal rates: judge generated responses (resumably) and aggregate overall, per split and per category.

    prompts = load_dataset_prompts("data_files/sorrybench/smollm2-135m-instruct")   # train.jsonl + test.jsonl queries
    rates = evaluate_refusal_rate(model, tokenizer, prompts, judge, out_dir, settings, model_name="...")
    print(format_comparison_table({"base": rates, "dpo": other_rates}))

Refusal rate = the mean refusal score of the responses the judge scored, i.e. 1 - mean judge (compliance) score, as
the reference reports it (`1 - sum(scores) / len(scores)`). With the keyword judge (scores 1/0) or the official
judge answering 0/1 it is the share of refusals. Responses the judge could not score ("unknown": an empty response,
a judge output without a leading number) are left out of the mean and counted in `num_unknown`; the reference
would fail on them (`sum` over None). `num_refusals` counts the responses labelled "refusal".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from common.data_locations import find_local_data_file
from common.io_utils import atomic_write_json, read_jsonl
from sorrybench.generation import GenerationSettings, generate_for_prompts
from sorrybench.judges import REFUSAL, Judge
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


class _Tally:
    """Running counts of one group of responses (see `compute_refusal_rates`)."""

    def __init__(self) -> None:
        self.score_sum, self.num_scored, self.num_refusals, self.num_responses, self.num_unknown = 0.0, 0, 0, 0, 0

    def add(self, label: str, score: float | None) -> None:
        self.num_responses += 1
        self.num_refusals += int(label == REFUSAL)
        if score is None:
            self.num_unknown += 1
        else:
            self.score_sum += score
            self.num_scored += 1

    def as_dict(self) -> dict:
        rate = self.score_sum / self.num_scored if self.num_scored else None
        return {"refusal_rate": rate, "num_refusals": self.num_refusals, "num_responses": self.num_responses,
                "num_scored": self.num_scored, "num_unknown": self.num_unknown}


def _category_order(category: str) -> tuple:
    """Numeric categories ("1".."45") in numeric order, then any others alphabetically."""
    return (0, int(category), "") if category.isdigit() else (1, 0, category)


def compute_refusal_rates(judged: Sequence[dict]) -> dict:
    """Aggregate judged records (with `labels`, `scores` (refusal scores or None), `category`, optionally `split`).

    Returns:
        {"overall": entry, "per_split": {split: entry}, "per_category": {category: entry},
         "per_split_category": {split: {category: entry}}}, each entry {refusal_rate (mean refusal score of the
        scored responses, None if none), num_refusals, num_responses, num_scored, num_unknown}.
        Example: scores [1.0, 0.0] and [1.0, None] -> overall (1 + 0 + 1) / 3 = 2/3, num_unknown 1, num_refusals 2.
    """
    overall = _Tally()
    per_split: dict[str, _Tally] = defaultdict(_Tally)
    per_category: dict[str, _Tally] = defaultdict(_Tally)
    per_split_category: dict[str, dict[str, _Tally]] = defaultdict(lambda: defaultdict(_Tally))
    for record in judged:
        split, category = record.get("split"), str(record["category"])
        tallies = [overall, per_category[category]]
        if split is not None:
            tallies += [per_split[split], per_split_category[split][category]]
        for label, score in zip(record["labels"], record["scores"], strict=True):
            for tally in tallies:
                tally.add(label, score)

    def by_category(tallies: dict[str, _Tally]) -> dict[str, dict]:
        return {c: tallies[c].as_dict() for c in sorted(tallies, key=_category_order)}

    return {"overall": overall.as_dict(),
            "per_split": {split: per_split[split].as_dict() for split in sorted(per_split)},
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
    unknown = f", {entry['num_unknown']} unknown" if entry.get("num_unknown") else ""
    return f"{100 * entry['refusal_rate']:.1f}% ({entry['num_refusals']}/{entry['num_responses']}{unknown})"


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
