"""Resumable batch processing into a JSONL file: results are appended as each batch completes, and a rerun
processes only the items whose key is not in the file yet.

    records = process_resumably(items, key="prompt_index", output_path=out / "generations.jsonl",
                                process_batch=generate_batch, batch_size=8, settings={"model": ...})

`settings` (the parameters that determine the results, e.g. model and temperature) is stored next to the
file as `<name>.settings.json`; resuming with different settings raises instead of mixing results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from common.io_utils import atomic_write_json, iter_jsonl, jsonl_appender, read_json, to_jsonable


def settings_path_for(output_path: Path) -> Path:
    """`<dir>/<stem>.settings.json` for `<dir>/<stem>.jsonl`."""
    return output_path.with_name(output_path.stem + ".settings.json")


def _check_or_write_settings(output_path: Path, settings: dict[str, Any]) -> None:
    path = settings_path_for(output_path)
    wanted = to_jsonable(settings)
    if path.exists() and output_path.exists():
        stored = read_json(path)
        changed = {k: (stored.get(k), wanted.get(k)) for k in set(stored) | set(wanted)
                   if stored.get(k) != wanted.get(k)}
        if changed:
            details = ", ".join(f"{k}: stored {old!r}, now {new!r}" for k, (old, new) in sorted(changed.items()))
            raise ValueError(f"{output_path} was produced with other settings ({details}); use another output "
                             f"directory or delete {output_path} and {path} to start over")
    else:
        atomic_write_json(path, wanted)


def _drop_partial_last_line(path: Path) -> None:
    """Cut a last line left unterminated by a killed run, so the next append starts on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def count_missing(items: Sequence[dict], *, key: str, output_path: Path) -> int:
    """How many of `items` have no result record in `output_path` yet (e.g. to skip loading a model)."""
    output_path = Path(output_path)
    if not output_path.exists():
        return len(items)
    done = {json.dumps(record[key]) for record in iter_jsonl(output_path, allow_partial_last_line=True)}
    return sum(json.dumps(item[key]) not in done for item in items)


def process_resumably(items: Sequence[dict], *, key: str, output_path: Path,
                      process_batch: Callable[[list[dict]], list[dict]], batch_size: int,
                      settings: dict[str, Any], desc: str = "processing") -> list[dict]:
    """Process `items` in batches, appending each batch's result records to `output_path` (JSONL).

    Args:
        items: Input records, each with a unique, JSON-able `item[key]`.
        key: Field identifying an item; every result record must carry the same `key` value.
        output_path: JSONL file; records already there (same key) are not recomputed.
        process_batch: Maps a list of items to one result record per item (same order).
        batch_size: Items per `process_batch` call (>= 1).
        settings: Parameters that determine the results (see the module docstring).
        desc: Progress-bar label.

    Returns:
        The result records of `items`, in the order of `items` (old and new together).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [item[key] for item in items]
    if len(set(map(json.dumps, keys))) != len(keys):
        raise ValueError(f"{desc}: items have duplicate `{key}` values")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    _check_or_write_settings(output_path, settings)
    done: dict[str, dict] = {}
    if output_path.exists():
        _drop_partial_last_line(output_path)
        done = {json.dumps(record[key]): record for record in iter_jsonl(output_path, allow_partial_last_line=True)}
    todo = [item for item in items if json.dumps(item[key]) not in done]
    if done and todo:
        print(f"{desc}: resuming, {len(items) - len(todo)} of {len(items)} already in {output_path}")
    with jsonl_appender(output_path) as writer, tqdm(total=len(todo), desc=desc, leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            results = process_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{desc}: process_batch returned {len(results)} records for {len(batch)} items")
            for item, record in zip(batch, results):
                if record.get(key) != item[key]:
                    raise RuntimeError(f"{desc}: result record has {key}={record.get(key)!r}, expected {item[key]!r}")
                writer.write(record)
                done[json.dumps(item[key])] = record
            bar.update(len(batch))
    return [done[json.dumps(k)] for k in keys]
