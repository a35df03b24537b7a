"""Plan-level rules used by `common/plan.py`: field-name suggestions, names, the outputs directory, reference-plan
fields, input files, and the seeds of repetitions. Every function returns problems (one line each) instead of raising, so a plan's
problems are all reported in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from common.config import (FIELD_ALIASES, FILL_THIS_IN, LEGACY_IGNORED_FIELDS, LEGACY_MAPPED_FIELDS,
                           LEGACY_RENAMED_FIELDS, MAX_SEED, RunConfig)
from common.data_locations import (HUB_SOURCES, candidate_paths, find_local_data_file, is_hub_dataset_id,
                                   relative_data_name)

MAX_NAME_BYTES = 255  # the usual file-name limit (ext4, APFS, NTFS)
REPETITION_SEED_STRIDE = 1_000_003  # a prime: seeds of repetitions of nearby base seeds rarely collide
RUN_REFERENCE = re.compile(r"\{run:([^{}]+)\}")
LEGACY_FIELDS = LEGACY_IGNORED_FIELDS | LEGACY_MAPPED_FIELDS | set(LEGACY_RENAMED_FIELDS)


def suggest_fields(key: str, known: list[str]) -> list[str]:
    """Closest field names to an unknown `key`: its alias (`learning_rate` -> `lr`), then spelling neighbours."""
    alias = FIELD_ALIASES.get(key)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return list(dict.fromkeys(([alias] if alias in known else []) + close))[:3]


def type_name(annotation: Any) -> str:
    """'str', 'int or null', 'list[str]' for an annotation (the way a plan author reads it)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def name_problem(name: str, what: str, reserve_bytes: int = 0) -> str | None:
    """Why `name` cannot be a file name inside the outputs directory, or None.

    Rules (run names and plan names alike): not empty, no '/' or '\\', not starting with '.', no NUL byte, and at
    most 255 - `reserve_bytes` bytes in UTF-8 (`reserve_bytes`: room for a suffix such as '.plan_status.json').
    """
    limit = MAX_NAME_BYTES - reserve_bytes
    if not name:
        return f"{what} is empty; give it a name"
    if "\0" in name:
        return f"{what} {name[:40]!r}... contains a NUL character; remove it"
    if "/" in name or "\\" in name or name.startswith("."):
        return f"{what} {name!r} must be a plain name (no '/', '\\' or leading '.'): it names a file in outputs_dir"
    if len(name.encode("utf-8")) > limit:
        return (f"{what} is {len(name.encode('utf-8'))} bytes in UTF-8 (at most {limit}); shorten it "
                f"(it starts {name[:40]!r})")
    return None


def outputs_dir_problem(outputs_dir: Path) -> str | None:
    """Why the run directories cannot be created under `outputs_dir` (a file on the way, or not writable)."""
    existing = outputs_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == outputs_dir else f"cannot be created: {existing} is a file"
        return f"outputs_dir {outputs_dir} {where}; choose a directory path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"outputs_dir {outputs_dir}: {existing} is not writable; choose a directory you can write to"
    return None


def repetition_seed(seed: int, repetition: int) -> int:
    """Seed of repetition r of a run with fixed seed s: (s + r * 1_000_003) mod 2**32 (repetition 0 keeps s)."""
    return (seed + repetition * REPETITION_SEED_STRIDE) % MAX_SEED


def seed_problems(values: dict[str, Any], where: str) -> list[str]:
    """Every integer field whose name contains 'seed' must be -1 (derived) or in [0, 2**32)."""
    return [f"{where}: field '{key}' must be in [0, 2**32) or -1, got {value}" for key, value in values.items()
            if "seed" in key and isinstance(value, int) and not isinstance(value, bool)
            and not -1 <= value < MAX_SEED]


def fill_this_in_problems(values: dict[str, Any], where: str) -> list[str]:
    """A problem for every field whose value (or list item) is the reference plans' "FILL_THIS_IN" placeholder."""
    problems = []
    for key, value in values.items():
        if value == FILL_THIS_IN or (isinstance(value, list) and FILL_THIS_IN in value):
            problems.append(
                f"{where}: field '{key}' is \"{FILL_THIS_IN}\" (a placeholder of the reference plans); set it to an "
                f"existing path, or chain the run that writes it: \"{{run:NAME}}/model\" with NAME the "
                f"experiment_name of that run (e.g. the SFT run, with save_model true) in the same plan")
    return problems


def map_legacy_fields(values: dict[str, Any], where: str, problems: list[str], notes: list[str],
                      cuda_device_count: int) -> dict[str, Any]:
    """Reference-plan fields -> ours: renamed fields take the new name, `gpu_ids` sets `device`, ignored ones drop.

    `gpu_ids` [N, ...] (the reference's GPUs of one run) becomes `device` "cuda:N" when that GPU is visible and the
    config does not set `device` itself; [] (or no CUDA) keeps `device` ("auto": a GPU of `gpu_ids_pool`, else
    the CPU), with a note.
    """
    mapped = {k: v for k, v in values.items() if k not in LEGACY_IGNORED_FIELDS and k not in LEGACY_MAPPED_FIELDS
              and k not in LEGACY_RENAMED_FIELDS}
    for old, new in LEGACY_RENAMED_FIELDS.items():
        if old not in values:
            continue
        if new in values and values[new] != values[old]:
            problems.append(f"{where}: '{old}' ({values[old]!r}) and '{new}' ({values[new]!r}) disagree; "
                            f"keep '{new}' only")
        mapped.setdefault(new, values[old])
    gpu_ids = values.get("gpu_ids")
    if gpu_ids is None or gpu_ids == []:
        return mapped
    if not isinstance(gpu_ids, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                 for g in gpu_ids):
        problems.append(f"{where}: field 'gpu_ids' must be a list of GPU indices >= 0, got {gpu_ids!r}")
    elif "device" in values:
        notes.append(f"gpu_ids {gpu_ids} ignored: the config sets device {values['device']!r}")
    elif gpu_ids[0] < cuda_device_count:
        mapped["device"] = f"cuda:{gpu_ids[0]}"
        if len(gpu_ids) > 1:
            notes.append(f"gpu_ids {gpu_ids}: one run uses one device here (cuda:{gpu_ids[0]}); spread a large "
                         "model with device_map 'auto' or launch with torchrun/accelerate")
    else:
        notes.append(f"gpu_ids {gpu_ids}: GPU {gpu_ids[0]} is not available ({cuda_device_count} visible); "
                     "runs use device 'auto' (the CPU without CUDA)")
    return mapped


def _produced_by_plan_run(value: str, kept_run_names: set[str]) -> bool:
    """Whether `value` points into a run of this invocation (`{run:NAME}` with NAME not removed by `skip`)."""
    targets = RUN_REFERENCE.findall(value)
    return bool(targets) and any(target in kept_run_names or any(name.startswith(target + "_rep")
                                                                  for name in kept_run_names)
                                 for target in targets)


def _hub_disabled() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def missing_input_files(config: RunConfig, unresolved: dict[str, Any],
                        kept_run_names: set[str]) -> list[tuple[str, str]]:
    """(field, problem) for every input file of `config` that exists at no place of the data-location rule.

    Skipped: empty values, conventional names with a Hub source (`HUB_SOURCES`) unless HF_HUB_OFFLINE is set,
    values produced by a `{run:...}` of this plan (checked in `unresolved`, the values before references were
    replaced), and Hub dataset ids (`org/name`, loaded by `datasets` at run start). Nothing is downloaded.
    """
    missing = []
    for field_name in config.input_file_fields():
        value = getattr(config, field_name)
        raw = unresolved.get(field_name, value)
        if not value or not isinstance(value, str):
            continue
        if isinstance(raw, str) and _produced_by_plan_run(raw, kept_run_names):
            continue
        if find_local_data_file(value) is not None or is_hub_dataset_id(value):
            continue
        if relative_data_name(value) in HUB_SOURCES and not _hub_disabled():
            continue  # downloaded by the data-location rule when the run starts
        tried = ", ".join(str(path) for path in candidate_paths(value))
        missing.append((field_name, f"field '{field_name}': {value!r} not found (tried {tried}); "
                                    f"{config.input_file_hint(field_name, value)}"))
    return missing


def summarize_missing_inputs(missing: dict[str, list[str]]) -> list[str]:
    """One line per distinct missing-file problem, naming the first run it concerns and how many others."""
    lines = []
    for problem, wheres in missing.items():
        more = f" (and {len(wheres) - 1} more run(s))" if len(wheres) > 1 else ""
        lines.append(f"{wheres[0]}{more}: {problem}")
    return lines


def type_matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a dataclass field annotation (int is accepted for float; bool is not an int)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(type_matches(v, item_type) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def field_problems(config_cls: type[RunConfig], values: dict[str, Any], where: str, problems: list[str],
                 check_required: bool = True) -> None:
    """Append a problem for every unknown field, wrongly typed value, placeholder, out-of-range seed and
    (optionally) missing required field. Reference-plan fields (`LEGACY_FIELDS`) are accepted here."""
    hints = typing.get_type_hints(config_cls)
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    problems += fill_this_in_problems(values, where) + seed_problems(values, where)
    for key, value in values.items():
        if key in LEGACY_FIELDS and key not in known:
            continue
        if key not in known:
            close = suggest_fields(key, list(known))
            hint = (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close
                    else f"; the fields are documented in {config_cls.__module__}.{config_cls.__name__}")
            problems.append(f"{where}: unknown field '{key}'{hint}")
        elif not type_matches(value, hints[key]) and value != FILL_THIS_IN:
            problems.append(f"{where}: field '{key}' must be {type_name(hints[key])}, "
                            f"got {type(value).__name__} {value!r}")
    for name, f in known.items() if check_required else ():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in values:
            problems.append(f"{where}: missing required field '{name}'")
