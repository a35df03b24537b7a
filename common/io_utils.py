"""Small file helpers: atomic JSON writes, tolerant JSONL reads, and the run search the results printers share.

Atomic = write to a temporary file in the same directory, fsync, then `os.replace`, so a reader (or a rerun
after `kill -9`) sees either the old file or the complete new one, never half a file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def to_jsonable(value: Any) -> Any:
    """Convert tensors / numpy scalars / paths into plain JSON types (NaN and inf become None)."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; errors name the file and the line/column."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Yield the records of a JSONL file. A truncated last line (a run killed mid-write) is skipped;
    a malformed line elsewhere raises ValueError naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            if line_number == len(lines):
                return
            raise ValueError(f"{path}:{line_number}: invalid JSON line: {err.msg}") from None


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSONL file (see `iter_jsonl`)."""
    return list(iter_jsonl(path))


def finished_runs_or_none(find_runs: Callable[[], tuple[list, list[str]]], error_type: type[Exception],
                          where: str) -> tuple[list, list[str]] | None:
    """Front of every results printer: call `find_runs()` -> (runs, notes), print each note ("note: ...") and
    return (runs, notes).

    Returns None after printing "error: ..." to stderr when `find_runs` raises `error_type` (a bad directory or
    file) or finds no finished run under `where`; the printer then exits with code 2."""
    try:
        runs, notes = find_runs()
    except error_type as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    for note in notes:
        print(f"note: {note}")
    if not runs:
        print(f"error: no finished run under {where} ({len(notes)} skipped)", file=sys.stderr)
        return None
    return runs, notes
