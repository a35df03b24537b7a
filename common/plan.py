"""Experiment plans: load a JSON plan, validate it against a family's config dataclass, expand it into runs.

Pure: nothing here touches the disk except reading the plan file, so the whole plan is checked before any
run starts. Plan format (compatible with the reference implementation's plans):

    {"name": "...", "description": "...", "skip": 0, "repetitions": 1, "largest": false,
     "multiprocess": false, "num_parallel": 1, "gpu_ids_pool": [],
     "configurations": [{"base_config": {...}, "options": {"field": [v1, v2, ...]}}]}

Expansion: every configuration yields the cartesian product of its `options` over its `base_config` (option
fields must also appear in base_config). String fields are templated with `{field}` from the same expanded
config; in `experiment_name`, '.' and ',' then become '-' and '[', ']' and spaces are removed. `skip` drops the
first N expanded runs; `repetitions` > 1 repeats each run into `<name>_rep<i>` directories.
A string field may reference another run of the plan as `{run:EXPERIMENT_NAME}` (replaced by that run's
directory); runs are ordered so references come first. With repetitions, a reference resolves to the same
repetition of the referenced run. A reference to a run removed by `skip` resolves to its directory without
ordering (it is assumed done by an earlier invocation).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import LEGACY_IGNORED_FIELDS, RunConfig

TEMPLATE_PATTERN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RUN_REFERENCE_PATTERN = re.compile(r"\{run:([^{}]+)\}")
PLAN_FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "name": (str, "plan"),
    "description": (str, ""),
    "skip": (int, 0),
    "repetitions": (int, 1),
    "largest": (bool, False),
    "multiprocess": (bool, False),
    "num_parallel": (int, 1),
    "gpu_ids_pool": (list, []),
    "configurations": (list, None),
}


class PlanError(ValueError):
    """Every problem found in a plan, reported together (the runner exits with code 2)."""

    def __init__(self, plan_path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid plan {plan_path}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class RunSpec:
    """One expanded run, ready to execute."""

    name: str  # resolved experiment_name (with _rep<i> suffix when repetitions > 1)
    run_dir: Path
    config: RunConfig  # validated config; random_seed is the actual seed
    configuration_index: int
    overrides: dict[str, Any]  # the option values that made this run
    depends_on: tuple[str, ...] = ()
    references: dict[str, Path] = field(default_factory=dict)  # every `{run:NAME}` target -> its directory


@dataclass
class Plan:
    path: Path
    name: str
    description: str
    num_parallel: int
    multiprocess: bool
    gpu_ids_pool: list[int]
    largest: bool
    runs: list[RunSpec]  # in execution order: every run after the runs it references
    ignored_legacy_fields: list[str] = field(default_factory=list)


def derive_seed(run_name: str) -> int:
    """Deterministic seed in [0, 2**31) from a run name: first 8 hex digits of sha256(name) mod 2**31."""
    return int(hashlib.sha256(run_name.encode("utf-8")).hexdigest()[:8], 16) % 2**31


def sanitize_name(name: str) -> str:
    """'.' and ',' become '-', and '[', ']' and spaces are removed: 'lr_1e-07, [a]' -> 'lr_1e-07-a'."""
    return re.sub(r"[\[\] ]", "", name.replace(".", "-").replace(",", "-"))


def _type_matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a dataclass field annotation (int is accepted for float; bool is not an int)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_matches(v, item_type) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _fill_templates(values: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Replace `{field}` in string values with the value of `field` (repeated until no template is left)."""
    resolved = dict(values)
    for _ in range(10):
        changed = False
        for key, value in resolved.items():
            if not isinstance(value, str) or not TEMPLATE_PATTERN.search(value):
                continue
            missing = [m for m in TEMPLATE_PATTERN.findall(value) if m not in resolved]
            if missing:
                problems.append(f"{where}: field '{key}' uses unresolved template field(s) {missing}")
                resolved[key] = TEMPLATE_PATTERN.sub("", value)
                continue
            resolved[key] = TEMPLATE_PATTERN.sub(lambda m: str(resolved[m.group(1)]), value)
            changed = True
        if not changed:
            return resolved
    problems.append(f"{where}: templates reference each other in a cycle")
    return resolved


def _check_fields(config_cls: type[RunConfig], values: dict[str, Any], where: str, problems: list[str],
                 check_required: bool = True) -> None:
    """Append a problem for every unknown field, wrongly typed value and (optionally) missing required field."""
    hints = typing.get_type_hints(config_cls)
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in values.items():
        if key in LEGACY_IGNORED_FIELDS and key not in known:
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {close}?)" if close else f"; valid fields: {sorted(known)}"
            problems.append(f"{where}: unknown field '{key}'{hint}")
        elif not _type_matches(value, hints[key]):
            problems.append(f"{where}: field '{key}' must be {hints[key]}, got {type(value).__name__} {value!r}")
    for name, f in known.items() if check_required else ():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in values:
            problems.append(f"{where}: missing required field '{name}'")


def _expand_configuration(
    index: int, configuration: Any, config_cls: type[RunConfig], problems: list[str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Cartesian product of one configuration's options: list of (resolved field values, overrides)."""
    where = f"configurations[{index}]"
    if not isinstance(configuration, dict) or not isinstance(configuration.get("base_config"), dict):
        problems.append(f"{where}: expected an object with a 'base_config' object (and optional 'options')")
        return []
    unknown_keys = set(configuration) - {"base_config", "options"}
    if unknown_keys:
        problems.append(f"{where}: unknown key(s) {sorted(unknown_keys)}; expected 'base_config' and 'options'")
    base, options = configuration["base_config"], configuration.get("options", {})
    problems_before = len(problems)
    if not isinstance(options, dict) or not all(isinstance(v, list) and v for v in options.values()):
        problems.append(f"{where}.options: expected an object mapping field names to non-empty lists")
        return []
    for key in options:
        if key not in base:
            problems.append(f"{where}.options: field '{key}' is not in base_config (add it there with a default)")
    _check_fields(config_cls, base, f"{where}.base_config", problems)
    for key, values in options.items():
        for value in values:
            _check_fields(config_cls, {key: value}, f"{where}.options", problems, check_required=False)
    if len(problems) > problems_before:
        return []
    defaults = {f.name: getattr(config_cls, f.name) for f in dataclasses.fields(config_cls)
                if f.default is not dataclasses.MISSING}
    expanded = []
    for combination in itertools.product(*options.values()):
        overrides = dict(zip(options, combination))
        values = {**defaults, **base, **overrides}
        values = _fill_templates(values, where, problems)
        values["experiment_name"] = sanitize_name(values["experiment_name"])
        expanded.append((values, overrides))
    return expanded


def _order_by_references(runs: list[RunSpec], plan_path: Path) -> list[RunSpec]:
    """Topological order (stable with respect to expansion order); raises PlanError on a cycle."""
    by_name = {run.name: run for run in runs}
    ordered: list[RunSpec] = []
    state: dict[str, str] = {}

    def visit(run: RunSpec, chain: list[str]) -> None:
        if state.get(run.name) == "done":
            return
        if state.get(run.name) == "visiting":
            raise PlanError(plan_path, [f"run references form a cycle: {' -> '.join(chain + [run.name])}"])
        state[run.name] = "visiting"
        for dependency in run.depends_on:
            visit(by_name[dependency], chain + [run.name])
        state[run.name] = "done"
        ordered.append(run)

    for run in runs:
        visit(run, [])
    return ordered


def _resolve_run_references(values: dict[str, Any], run_dirs: dict[str, Path], repetition_suffix: str,
                            where: str, problems: list[str]) -> list[str]:
    """Replace `{run:NAME}` with the referenced run's directory in place; returns referenced run names."""
    referenced: list[str] = []
    for key, value in values.items():
        if not isinstance(value, str):
            continue
        for target in RUN_REFERENCE_PATTERN.findall(value):
            name = target + repetition_suffix if target + repetition_suffix in run_dirs else target
            if name not in run_dirs:
                close = difflib.get_close_matches(target, run_dirs, n=3)
                problems.append(f"{where}: field '{key}' references unknown run '{target}'"
                                + (f" (did you mean {close}?)" if close else ""))
                continue
            referenced.append(name)
            value = value.replace(f"{{run:{target}}}", str(run_dirs[name]))
        values[key] = value
    return referenced


def parse_plan(raw: dict[str, Any], plan_path: Path, config_cls: type[RunConfig]) -> Plan:
    """Validate and expand an already-parsed plan dict. Raises PlanError listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise PlanError(plan_path, [f"expected a JSON object at the top level, got {type(raw).__name__}"])
    settings = {}
    for key, (expected_type, default) in PLAN_FIELDS.items():
        value = raw.get(key, default)
        if value is None or not isinstance(value, expected_type) or (expected_type is int and isinstance(value, bool)):
            problems.append(f"plan field '{key}' must be {expected_type.__name__}, got {value!r}")
        settings[key] = value
    for key in set(raw) - set(PLAN_FIELDS):
        problems.append(f"unknown plan field '{key}'; valid plan fields: {sorted(PLAN_FIELDS)}")
    if problems:
        raise PlanError(plan_path, problems)
    if settings["repetitions"] < 1 or settings["skip"] < 0 or settings["num_parallel"] < 1:
        raise PlanError(plan_path, ["'repetitions' and 'num_parallel' must be >= 1 and 'skip' >= 0"])

    expanded = []
    for index, configuration in enumerate(settings["configurations"]):
        expanded += [(index, *pair) for pair in _expand_configuration(index, configuration, config_cls, problems)]
    if problems:
        raise PlanError(plan_path, list(dict.fromkeys(problems)))
    repetitions = settings["repetitions"]
    suffixes = [f"_rep{r}" for r in range(repetitions)] if repetitions > 1 else [""]
    run_dirs: dict[str, Path] = {}
    seen_dirs: set[Path] = set()
    pending = []
    for position, (index, values, overrides) in enumerate(expanded):
        for suffix in suffixes:
            name = values["experiment_name"] + suffix
            outputs_dir = Path(values["outputs_dir"])
            run_dir = outputs_dir / name
            where = f"configurations[{index}] run '{name}'"
            if "/" in name or "\\" in name or not name or name.startswith("."):
                problems.append(f"{where}: experiment_name must be a plain directory name inside outputs_dir")
            elif not run_dir.resolve().is_relative_to(outputs_dir.resolve()):
                problems.append(f"{where}: run directory {run_dir} escapes outputs_dir {outputs_dir}")
            if run_dir.resolve() in seen_dirs:
                problems.append(f"{where}: duplicate run directory {run_dir} (put the option fields in experiment_name)")
            seen_dirs.add(run_dir.resolve())
            run_dirs[name] = run_dir
            if position >= settings["skip"]:
                pending.append((index, dict(values), overrides, name, run_dir, suffix))
    kept_names = {entry[3] for entry in pending}
    config_field_names = {f.name for f in dataclasses.fields(config_cls)}
    runs = []
    for index, values, overrides, name, run_dir, suffix in pending:
        where = f"configurations[{index}] run '{name}'"
        referenced = _resolve_run_references(values, run_dirs, suffix, where, problems)
        if values["random_seed"] == -1:
            values["random_seed"] = derive_seed(name)
        values["experiment_name"] = name
        try:
            config = config_cls(**{k: v for k, v in values.items() if k in config_field_names})
        except (TypeError, ValueError) as err:
            problems.append(f"{where}: {err}")
            continue
        problems += [f"{where}: {problem}" for problem in config.validate()]
        dependencies = tuple(dict.fromkeys(r for r in referenced if r in kept_names))
        runs.append(RunSpec(name, run_dir, config, index, overrides, dependencies,
                            {r: run_dirs[r] for r in dict.fromkeys(referenced)}))
    if problems:
        raise PlanError(plan_path, list(dict.fromkeys(problems)))
    legacy = sorted({k for c in settings["configurations"] for k in c["base_config"] if k in LEGACY_IGNORED_FIELDS})
    return Plan(plan_path, settings["name"], settings["description"], settings["num_parallel"],
                settings["multiprocess"], list(settings["gpu_ids_pool"]), settings["largest"],
                _order_by_references(runs, plan_path), legacy)


def load_plan(plan_path: Path, config_cls: type[RunConfig]) -> Plan:
    """Read, validate and expand the plan file at `plan_path` (see module docstring). Raises PlanError."""
    plan_path = Path(plan_path)
    try:
        raw = json.loads(plan_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(plan_path, ["plan file not found"]) from None
    except json.JSONDecodeError as err:
        raise PlanError(plan_path, [f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"]) from None
    return parse_plan(raw, plan_path, config_cls)
