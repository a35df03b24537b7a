"""What makes a run directory ours, what makes a finished run still valid, and who may write it.

Ownership: a run directory is ours only if it holds the marker file `.ld_run.json`
    {"toolkit": "likelihood_displacement", "plan": PLAN KEY, "run": NAME, "attempt": ID, "pid": PID, "created_at": T}
written when the runner creates (or takes over an empty) directory. A directory without it is never deleted,
whatever else it holds (a Hugging Face model folder has a config.json too); the run fails with a message naming
the path. A finished run of another plan (another plan file) whose config or inputs differ is not replaced
unless `--rerun` is given.

Identity of a finished run = its config + the identity of its inputs, recorded in status.json (`identity`):
    config     the resolved config (config.json), compared field by field
    inputs     a fingerprint of every path in the config's `input_file_fields()` that exists locally (resolved by
               the data-location rule): a file of at most HASH_LIMIT_BYTES is identified by size and SHA-256 of its
               content (copying or touching it changes nothing, editing it does); a larger file by size and
               modification time in ns (hashing a multi-GB checkpoint on every resume would cost minutes); a
               directory by the fingerprints of all its files (relative names). A path that is not local (a Hub
               id) is identified by its name alone, which config.json already holds.
    parents    the completion stamp (a random id written into status.json when a run finishes) of every run the
               config references with `{run:NAME}`; a redone parent gets a new stamp, so its dependents are redone.
A run is reused ("cached") only if status is "done", summary.json exists and all three are unchanged; otherwise
`finished_state` says why it is redone and the runner logs that.

Locking: every run directory has a lock file `<outputs_dir>/.<name>.lock`, held (`fcntl.flock`, released by the
kernel when the process dies, even on kill -9) by the process that checks, cleans and writes the run. A second
process on the same run waits for it (and says so), then finds the run done and reuses it. "done" is written by
the process that wrote the run's files, after they are complete, and only while its marker's attempt id is still
in the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from common.config import RunConfig, config_to_dict
from common.data_locations import find_local_data_file
from common.io_utils import atomic_write_json, read_json, to_jsonable

log = logging.getLogger("ld.run_state")
MARKER_FILE = ".ld_run.json"
TOOLKIT_ID = "likelihood_displacement"
HASH_LIMIT_BYTES = 64 * 2**20  # files up to 64 MiB are identified by content, larger ones by size + mtime
FINAL_STATES = ("done", "failed", "interrupted")


class RunDirError(RuntimeError):
    """The run directory cannot be used (not ours, or another plan's finished run); the message says why."""


def file_fingerprint(path: Path) -> dict[str, Any]:
    """{"size", "sha256"} for a file of at most HASH_LIMIT_BYTES, else {"size", "mtime_ns"}."""
    stat = path.stat()
    if stat.st_size > HASH_LIMIT_BYTES:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return {"size": stat.st_size, "sha256": digest.hexdigest()}


def input_fingerprint(value: str) -> dict[str, Any] | None:
    """Fingerprint of the local file or directory `value` names (data-location rule); None if it is not local."""
    if not value:
        return None
    path = find_local_data_file(value)
    if path is None:
        return None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"files": {str(p.relative_to(path)): file_fingerprint(p) for p in files}}
    return file_fingerprint(path)


def run_identity(config: RunConfig, references: dict[str, Path]) -> dict[str, Any]:
    """{"inputs": {field: fingerprint}, "parents": {run name: completion stamp}} (the config is compared apart)."""
    inputs = {name: input_fingerprint(getattr(config, name)) for name in config.input_file_fields()
              if isinstance(getattr(config, name, None), str)}
    parents = {}
    for name, run_dir in sorted(references.items()):
        status = read_status(run_dir)
        parents[name] = status.get("completion") if status.get("status") == "done" else None
    return {"inputs": inputs, "parents": parents}


def read_status(run_dir: Path) -> dict:
    """status.json of a run directory as a dict ({} when missing or unreadable)."""
    try:
        status = read_json(Path(run_dir) / "status.json")
    except (FileNotFoundError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def read_marker(run_dir: Path) -> dict | None:
    """The ownership marker of a run directory, or None when there is none (or it is not ours)."""
    try:
        marker = read_json(Path(run_dir) / MARKER_FILE)
    except (FileNotFoundError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("toolkit") == TOOLKIT_ID else None


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _as_current_config(saved: Any, config_cls: type[RunConfig]) -> Any:
    """A saved config.json read through today's config class, so an older spelling of the same value compares
    equal (e.g. num_train_samples -1, now None: `common.training_field_checks.normalize_off_values`); as saved
    when it is not a dict or no longer builds (a removed or retyped field then shows as changed)."""
    if not isinstance(saved, dict):
        return saved
    try:
        return to_jsonable(config_to_dict(config_cls(**saved)))
    except (TypeError, ValueError):
        return saved


def finished_state(run_dir: Path, config: RunConfig, identity: dict) -> tuple[bool, str]:
    """(True, "") when `run_dir` holds a finished run of exactly this config and these inputs; else (False, why),
    where why is "" for a run never started here."""
    if read_marker(run_dir) is None:
        return False, ""
    status = read_status(run_dir)
    if status.get("status") != "done":
        return False, f"previous attempt is {status.get('status') or 'missing'}"
    if not (run_dir / "summary.json").is_file():
        return False, "summary.json is missing"
    try:
        saved_config = _as_current_config(read_json(run_dir / "config.json"), type(config))
    except (FileNotFoundError, ValueError):
        saved_config = None
    fresh_config = to_jsonable(config_to_dict(config))
    if not isinstance(saved_config, dict):
        return False, "config.json is missing or unreadable"
    if saved_config != fresh_config:
        return False, f"config changed: {', '.join(_changed_keys(saved_config, fresh_config))}"
    saved = status.get("identity") or {}
    reasons = [f"input '{name}' ({getattr(config, name)}) changed"
               for name in _changed_keys(saved.get("inputs") or {}, identity["inputs"])]
    reasons += [f"parent run '{name}' was redone" for name in _changed_keys(saved.get("parents") or {},
                                                                             identity["parents"])]
    return (False, "; ".join(reasons)) if reasons else (True, "")


def claim_run_dir(run_dir: Path, run_name: str, plan_key: str, replace_finished: bool) -> str:
    """Make `run_dir` an empty run directory of this attempt (marker written) and return the attempt id.

    An existing directory is cleaned only when it is ours (marker) and, if it holds another plan's finished run,
    only with `replace_finished` (--rerun). Raises RunDirError naming the path otherwise."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is a file; remove it or choose another experiment_name")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        marker = read_marker(run_dir)
        if marker is None:
            legacy = (run_dir / "status.json").is_file() and (run_dir / "config.json").is_file()
            hint = " (a run directory from before ownership markers? delete it to redo the run)" if legacy else ""
            raise RunDirError(f"{run_dir} exists and was not made by this toolkit (no {MARKER_FILE}); refusing to "
                              f"delete it: move it away or choose another experiment_name/outputs_dir{hint}")
        other_plan = marker.get("plan") != plan_key
        if other_plan and read_status(run_dir).get("status") == "done" and not replace_finished:
            raise RunDirError(f"{run_dir} holds a finished run of another plan ({marker.get('plan')}) with a "
                              "different config or inputs; refusing to replace it: pass --rerun to replace it, or "
                              "choose another experiment_name/outputs_dir")
        if other_plan:
            log.warning("replacing %s (run of another plan: %s, status %s)", run_dir, marker.get("plan"),
                        read_status(run_dir).get("status"))
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = uuid.uuid4().hex
    atomic_write_json(run_dir / MARKER_FILE, {"toolkit": TOOLKIT_ID, "plan": plan_key, "run": run_name,
                                              "attempt": attempt, "pid": os.getpid(), "created_at": time.time()})
    return attempt


def still_owned(run_dir: Path, attempt: str) -> bool:
    """Whether `run_dir` still holds the marker of `attempt` (nobody cleaned or took over the directory)."""
    marker = read_marker(run_dir)
    return marker is not None and marker.get("attempt") == attempt


def lock_path(run_dir: Path) -> Path:
    """`<outputs_dir>/.<run name>.lock`: beside the run directory, so cleaning the directory keeps the lock."""
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the run's lock for the block; yields True. If another process holds it: with `wait`, say so and wait;
    without, yield False at once (the block must then leave the run alone)."""
    path = lock_path(Path(run_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            log.warning("run %s is being run by another process (%s); waiting for it to finish", run_dir.name, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def mark_abandoned(run_dir: Path, state: str, error: str) -> bool:
    """Record `state` ("failed"/"interrupted") with `error` for a run left "running" by a process that is gone.

    Done only if the lock is free (no live process works on the run) and status.json still says "running".
    Returns whether it was recorded."""
    with run_lock(run_dir, wait=False) as acquired:
        status = read_status(run_dir)
        if not acquired or status.get("status") != "running":
            return False
        status.update(status=state, error=error, finished_at=time.time())
        atomic_write_json(Path(run_dir) / "status.json", status)
        return True
