"""Small file helpers: atomic writes, strict JSONL reads and writes (`jsonlines`), and the run discovery the results printers share.

Atomic = write to a temporary file in the same directory, fsync, then `os.replace`, so a reader (or a rerun
after `kill -9`) sees either the old file or the complete new one, never half a file. Every writer that goes
through a temporary file (JSON, text, safetensors, reference caches) uses `atomic_write_via`, which gives the
file the mode a plain `open(path, "w")` would (0666 minus the umask; `tempfile.mkstemp` alone makes it 0600).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import jsonlines

from common.run_family import other_family_error

T = TypeVar("T")
# What a results printer's per-run check may raise on a config/summary of the wrong shape.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


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


def current_umask() -> int:
    """The process umask (read by setting it and putting it back; there is no read-only call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(root: Path) -> None:
    """Give `root` and everything under it the modes plain `mkdir`/`open` would: 0777 / 0666 minus the umask."""
    umask = current_umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def atomic_write_via(path: Path, write: Callable[[str], None]) -> None:
    """Atomically create/replace `path` with what `write(tmp_path)` writes to a temporary sibling file.

    The temporary file is fsynced and renamed over `path`; its mode is 0666 & ~umask (e.g. 0644 under umask
    022), as for a file made with `open`. On any error (or Ctrl-C) the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp_name)
        os.chmod(tmp_name, 0o666 & ~current_umask())  # after writing: some writers replace the file they are given
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(target: Path, keep_complete_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `target` in one rename.

    With `keep_complete_existing`, a `target` holding `config.json` by then (another process finished first)
    is kept and the new copy dropped. On an exception the temporary directory is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        honour_umask(tmp)  # safetensors writes its files 0600
        if keep_complete_existing and (target / "config.json").is_file():
            return
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after a successful rename


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (parent directories are created)."""
    atomic_write_via(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; errors name the file and the line/column (or the byte that is not UTF-8)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: byte {err.start} is not UTF-8 ({err.reason}); expected a UTF-8 JSON file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None


def _jsonl_dumps(record: Any) -> str:
    """One JSONL line's text: plain JSON types (`to_jsonable`), non-ASCII kept as is (the files are UTF-8)."""
    return json.dumps(to_jsonable(record), ensure_ascii=False)


def write_jsonl(path: Path, records: Iterable[Any]) -> None:
    """Write `records` as a JSONL file (one JSON value per line) atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle, jsonlines.Writer(handle, dumps=_jsonl_dumps) as writer:
            writer.write_all(records)

    atomic_write_via(path, write)


@contextmanager
def jsonl_appender(path: Path) -> Iterator[jsonlines.Writer]:
    """A `jsonlines.Writer` appending to `path` (created if absent), flushed after every record so a kill leaves
    at most a cut-off last line (which `iter_jsonl(..., allow_partial_last_line=True)` skips)."""
    with Path(path).open("a", encoding="utf-8") as handle, \
            jsonlines.Writer(handle, dumps=_jsonl_dumps, flush=True) as writer:
        yield writer


def _decoded_lines(path: Path, lines: list[bytes]) -> Iterator[str]:
    """The lines as text; a line that is not UTF-8 is an error naming the file, line and byte."""
    for index, raw in enumerate(lines):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{index + 1}: byte {err.start + 1} of the line is not UTF-8 ({err.reason}); "
                             "expected UTF-8 text (re-save the file as UTF-8)") from None


def iter_jsonl(path: Path, *, allow_partial_last_line: bool = False) -> Iterator[dict]:
    """Yield the records (JSON objects) of a JSONL file, one per non-blank line (read with `jsonlines`).

    Raises ValueError naming the file and line for a line that is not UTF-8, not valid JSON, or not an object.
    With `allow_partial_last_line` (append-only logs of our own, e.g. metrics.jsonl after a kill -9), a last line
    that has no terminating newline and does not parse is skipped; a data file never gets that leniency."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    unterminated_last = len(lines) if not data.endswith(b"\n") else 0  # 1-based line number, 0: none
    reader = jsonlines.Reader(_decoded_lines(path, lines), loads=json.loads)
    while True:
        try:
            record = reader.read(type=dict, skip_empty=True)
        except EOFError:
            return
        except jsonlines.InvalidLineError as err:
            cause = err.__cause__
            if not isinstance(cause, json.JSONDecodeError):  # valid JSON, but not an object (null included)
                raise ValueError(f"{path}:{err.lineno}: expected a JSON object per line, "
                                 f"got {type(json.loads(err.line)).__name__}") from None
            if allow_partial_last_line and err.lineno == unterminated_last:
                return
            truncated = " (the line looks cut off)" if err.lineno == unterminated_last else ""
            raise ValueError(f"{path}:{err.lineno}: invalid JSON line{truncated}: {cause.msg} at column "
                             f"{cause.colno}; expected one JSON object per line") from None
        yield record


def read_jsonl(path: Path, *, allow_partial_last_line: bool = False) -> list[dict]:
    """All records of a JSONL file (see `iter_jsonl`)."""
    return list(iter_jsonl(path, allow_partial_last_line=allow_partial_last_line))


class RunDiscoveryError(ValueError):
    """An experiments directory to summarise is missing or holds no run directory."""


@dataclass
class FinishedRun:
    """A finished run as the results printers see it: directory, config.json and summary.json (JSON objects)."""

    run_dir: Path
    config: dict
    summary: dict

    @property
    def name(self) -> str:
        return self.run_dir.name


def _read_finished_run(run_dir: Path) -> FinishedRun | str:
    """The run, or a note saying why it is skipped (unfinished, unreadable, or JSON of the wrong shape)."""
    try:
        status = read_json(run_dir / "status.json")
        state = status.get("status") if isinstance(status, dict) else None
        if state != "done" or not (run_dir / "summary.json").exists():
            return f"skipping incomplete run {run_dir} (status: {state})"
        config, summary = read_json(run_dir / "config.json"), read_json(run_dir / "summary.json")
    except (FileNotFoundError, ValueError) as error:
        return f"skipping unreadable run {run_dir}: {error}"
    for name, value in (("config.json", config), ("summary.json", summary)):
        if not isinstance(value, dict):
            return f"skipping run {run_dir}: {name} holds a JSON {type(value).__name__}, expected an object"
    return FinishedRun(run_dir, config, summary)


def find_finished_runs(experiments_dirs: list[Path]) -> tuple[list[FinishedRun], list[str]]:
    """Finished runs under the directories (recursively: any directory holding status.json) and skip notes.

    Raises:
        RunDiscoveryError: a directory does not exist or holds no run directory.
    """
    runs, notes = [], []
    for experiments_dir in map(Path, experiments_dirs):
        if not experiments_dir.is_dir():
            raise RunDiscoveryError(f"--experiments_dir {experiments_dir}: not a directory")
        status_files = sorted(experiments_dir.rglob("status.json"))
        if not status_files:
            raise RunDiscoveryError(f"--experiments_dir {experiments_dir}: no run directories found (a run directory "
                                    "holds status.json, config.json and summary.json); pass a plan's outputs_dir")
        for status_file in status_files:
            found = _read_finished_run(status_file.parent)
            (notes if isinstance(found, str) else runs).append(found)
    return runs, notes


def finished_runs_or_none(experiments_dirs: list[Path], read_run: Callable[[FinishedRun], T | str], *,
                          families: tuple[str, ...] | None = None, flag: str = "--experiments_dir"
                          ) -> tuple[list[T], list[str]] | None:
    """Front of every results printer: with `families`, refuse a directory whose runs all belong to other
    experiment families (`common.run_family.other_family_error`, naming `flag` and the printer to use); find the
    finished runs, turn each into the printer's record with
    `read_run(run)` (which returns the record, or a note string to skip the run), print each note
    ("note: ...") and return (records, notes).

    A run whose config/summary has the wrong shape for the printer (`read_run` raises KeyError, TypeError,
    ValueError, AttributeError or IndexError) is skipped with a note naming it, never a crash. Returns None
    after printing "error: ..." to stderr for a missing/empty directory or when no run is left; the printer then
    exits with code 2."""
    where = " ".join(map(str, experiments_dirs))
    for directory in map(Path, experiments_dirs) if families else ():
        wrong_family = other_family_error(directory, families, flag) if directory.is_dir() else None
        if wrong_family:
            print(f"error: {wrong_family}", file=sys.stderr)
            return None
    try:
        runs, notes = find_finished_runs(experiments_dirs)
    except RunDiscoveryError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    records = []
    for run in runs:
        try:
            record = read_run(run)
        except SHAPE_ERRORS as error:
            record = (f"skipping run {run.run_dir}: its config.json/summary.json do not have the expected content "
                      f"({type(error).__name__}: {error})")
        (notes if isinstance(record, str) else records).append(record)
    for note in notes:
        print(f"note: {note}")
    if not records:
        print(f"error: no finished run under {where} ({len(notes)} skipped)", file=sys.stderr)
        return None
    return records, notes
