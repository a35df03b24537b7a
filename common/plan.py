"""Experiment plans: load a JSON plan, validate it against a family's config dataclass, expand it into runs.

Nothing here writes to the disk: the whole plan is checked before any run starts (reading the plan file
strictly, `common/plan_json.py`; checking that input files exist and outputs_dir is writable,
`common/plan_checks.py`). Plan format (compatible with the reference implementation's plans):

    {"name": "...", "description": "...", "skip": 0, "repetitions": 1, "largest": false,
     "multiprocess": false, "num_parallel": 1, "gpu_ids_pool": [],
     "configurations": [{"base_config": {...}, "options": {"field": [v1, v2, ...]}}]}

Expansion: every configuration yields the cartesian product of its `options` over its `base_config` (option
fields must also appear in base_config). String fields are templated with `{field}` from the same expanded
config; in `experiment_name`, '.' and ',' then become '-' and '[', ']' and spaces are removed. `~` in
outputs_dir is expanded. `skip` drops the first N expanded runs; `repetitions` > 1 repeats each run into
`<name>_rep<i>` directories, repetition i of a run with a fixed `random_seed` s using the seed
(s + i * 1_000_003) mod 2**32 (recorded in its config.json; -1 derives each repetition's seed from its name).
A string field may reference another run of the plan as `{run:EXPERIMENT_NAME}` (replaced by that run's
directory); runs are ordered so references come first. With repetitions, a reference resolves to the same
repetition of the referenced run. A reference to a run removed by `skip` resolves to its directory without
ordering (it is assumed done by an earlier invocation).
Reference-plan fields (`common.config.LEGACY_*`) are mapped (`wandb_project_name` -> `wandb_project`,
`gpu_ids` -> `device`) or ignored and listed once per plan; `"FILL_THIS_IN"` is an error naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from common.config import LEGACY_IGNORED_FIELDS, RunConfig
from common.plan_checks import (field_problems, map_legacy_fields, missing_input_files, name_problem,
                                outputs_dir_problem, repetition_seed, summarize_missing_inputs)
from common.plan_json import read_plan_json

TEMPLATE_PATTERN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RUN_REFERENCE_PATTERN = re.compile(r"\{run:([^{}]+)\}")
PLAN_FILE_SUFFIXES = (".plan.log", ".plan_status.json")  # files the runner writes as <plan name><suffix>
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


class ExpandedRun(NamedTuple):
    """One combination of a configuration's options, before repetitions and run references are resolved."""

    configuration_index: int
    values: dict[str, Any]      # every config field's value (defaults, base_config, this combination)
    overrides: dict[str, Any]   # the option values of this combination


class PendingRun(NamedTuple):
    """One run kept by `skip` (a repetition of an `ExpandedRun`), its seed set, before the config is built."""

    configuration_index: int
    values: dict[str, Any]      # field values with the run's actual random_seed
    overrides: dict[str, Any]
    name: str                   # experiment_name + repetition suffix
    run_dir: Path
    repetition_suffix: str      # "_rep<i>" with repetitions > 1, else ""


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
    ignored_legacy_fields: list[str] = field(default_factory=list)  # reference-plan fields without effect here
    notes: list[str] = field(default_factory=list)  # deferred checks and field mappings, each once per plan


def derive_seed(run_name: str) -> int:
    """Deterministic seed in [0, 2**31) from a run name: first 8 hex digits of sha256(name) mod 2**31."""
    return int(hashlib.sha256(run_name.encode("utf-8")).hexdigest()[:8], 16) % 2**31


def sanitize_name(name: str) -> str:
    """'.' and ',' become '-', and '[', ']' and spaces are removed: 'lr_1e-07, [a]' -> 'lr_1e-07-a'."""
    return re.sub(r"[\[\] ]", "", name.replace(".", "-").replace(",", "-"))


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


def _expand_configuration(
    index: int, configuration: Any, config_cls: type[RunConfig], problems: list[str], notes: list[str],
    sanitize_names: bool = True,
) -> list[ExpandedRun]:
    """Cartesian product of one configuration's options: one `ExpandedRun` per combination.

    Reference-plan fields are mapped onto ours (`map_legacy_fields`) before the defaults fill the rest."""
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
    field_problems(config_cls, base, f"{where}.base_config", problems)
    for key, values in options.items():
        for value in values:
            field_problems(config_cls, {key: value}, f"{where}.options", problems, check_required=False)
    if len(problems) > problems_before:
        return []
    defaults = {f.name: getattr(config_cls, f.name) for f in dataclasses.fields(config_cls)
                if f.default is not dataclasses.MISSING}
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expanded = []
    for combination in itertools.product(*options.values()):
        overrides = dict(zip(options, combination))
        given = map_legacy_fields({**base, **overrides}, where, problems, notes, cuda_devices)
        values = _fill_templates({**defaults, **given}, where, problems)
        if sanitize_names:
            values["experiment_name"] = sanitize_name(values["experiment_name"])
        values["outputs_dir"] = str(Path(values["outputs_dir"]).expanduser())
        expanded.append(ExpandedRun(index, values, overrides))
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


def _plan_settings(raw: Any, problems: list[str]) -> dict[str, Any]:
    """The plan-level fields (PLAN_FIELDS) with their defaults; a problem for each bad one."""
    if not isinstance(raw, dict):
        problems.append(f"expected a JSON object at the top level, got {type(raw).__name__}")
        return {}
    settings = {}
    for key, (expected_type, default) in PLAN_FIELDS.items():
        value = raw.get(key, default)
        if value is None or not isinstance(value, expected_type) or (expected_type is int and isinstance(value, bool)):
            problems.append(f"plan field '{key}' must be {expected_type.__name__}, got {value!r}")
        settings[key] = value
    for key in sorted(set(raw) - set(PLAN_FIELDS)):
        close = difflib.get_close_matches(key, PLAN_FIELDS, n=2)
        problems.append(f"unknown plan field '{key}'" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                                         if close else " (plan fields: see common/plan.py)"))
    if problems:
        return settings
    if settings["repetitions"] < 1 or settings["skip"] < 0 or settings["num_parallel"] < 1:
        problems.append("'repetitions' and 'num_parallel' must be >= 1 and 'skip' >= 0")
    bad_gpus = [g for g in settings["gpu_ids_pool"] if not isinstance(g, int) or isinstance(g, bool) or g < 0]
    if bad_gpus:
        problems.append(f"plan field 'gpu_ids_pool' must list GPU indices (integers >= 0), got {bad_gpus!r}")
    if not settings["configurations"]:
        problems.append("plan field 'configurations' is empty; add at least one {\"base_config\": {...}}")
    reserve = max(len(suffix) for suffix in PLAN_FILE_SUFFIXES)
    problem = name_problem(sanitize_name(settings["name"]), "plan name (after '.'/','/space rules)", reserve)
    if problem:
        problems.append(problem)
    return settings


def _run_directories(expanded: list[ExpandedRun], settings: dict[str, Any], problems: list[str],
                     check_skip: bool = True) -> tuple[dict[str, Path], list[PendingRun]]:
    """Name and directory of every run (all repetitions), and the runs `skip` keeps with their seeds."""
    repetitions = settings["repetitions"]
    suffixes = [f"_rep{r}" for r in range(repetitions)] if repetitions > 1 else [""]
    run_dirs: dict[str, Path] = {}
    seen_dirs: set[Path] = set()
    pending: list[PendingRun] = []
    for position, run in enumerate(expanded):
        for repetition, suffix in enumerate(suffixes):
            name = run.values["experiment_name"] + suffix
            run_dir = Path(run.values["outputs_dir"]) / name
            where = f"configurations[{run.configuration_index}] run '{name}'"
            problem = name_problem(name, "experiment_name")
            if problem:
                problems.append(f"{where}: {problem}")
                continue
            if run_dir.resolve() in seen_dirs:
                problems.append(f"{where}: duplicate run directory {run_dir} "
                                "(put the option fields in experiment_name)")
            elif name in run_dirs:
                problems.append(f"{where}: experiment_name also used for {run_dirs[name]} (names identify runs, e.g. "
                                "in {run:NAME}); put the fields that differ in experiment_name")
            seen_dirs.add(run_dir.resolve())
            run_dirs[name] = run_dir
            if position >= settings["skip"]:
                seed = run.values["random_seed"]
                seed = derive_seed(name) if seed == -1 else repetition_seed(seed, repetition)
                pending.append(PendingRun(run.configuration_index, {**run.values, "random_seed": seed},
                                          run.overrides, name, run_dir, suffix))
    total = len(expanded) * len(suffixes)
    if check_skip and expanded and settings["skip"] >= len(expanded):
        problems.append(f"'skip' {settings['skip']} drops every run ({len(expanded)} configuration(s) expand to "
                        f"{total} run(s)); lower it")
    for outputs_dir in dict.fromkeys(Path(run.values["outputs_dir"]) for run in expanded):
        problem = outputs_dir_problem(outputs_dir)
        if problem:
            problems.append(problem)
    return run_dirs, pending


def parse_plan(raw: Any, plan_path: Path, config_cls: type[RunConfig], *, sanitize_names: bool = True,
               check_input_files: bool = True) -> Plan:
    """Validate and expand an already-parsed plan. Raises PlanError listing every problem of every run.

    `sanitize_names=False` keeps experiment names as given (the reference-command front-ends, whose directory
    names keep their '.', e.g. `_quantile_0.5_`). `check_input_files=False` skips the existence check of input
    files (for tests of shipped plans whose inputs are made by other commands first)."""
    problems: list[str] = []
    notes: list[str] = []
    settings = _plan_settings(raw, problems)
    if problems:
        raise PlanError(plan_path, problems)
    expanded = []
    for index, configuration in enumerate(settings["configurations"]):
        expanded += _expand_configuration(index, configuration, config_cls, problems, notes, sanitize_names)
    # Configurations with field problems expanded to nothing; the others are still checked run by run below,
    # so one pass reports every problem (the skip count is only judged when every configuration expanded).
    all_expanded = not problems
    run_dirs, pending = _run_directories(expanded, settings, problems, all_expanded)
    kept_names = {run.name for run in pending}
    config_field_names = {f.name for f in dataclasses.fields(config_cls)}
    runs = []
    missing_inputs: dict[str, list[str]] = {}  # problem -> the runs it concerns (one line per distinct file)
    for run in pending:
        index, values, name = run.configuration_index, run.values, run.name
        where = f"configurations[{index}] run '{name}'"
        unresolved = dict(values)
        referenced = _resolve_run_references(values, run_dirs, run.repetition_suffix, where, problems)
        values["experiment_name"] = name
        try:
            config = config_cls(**{k: v for k, v in values.items() if k in config_field_names})
        except (TypeError, ValueError) as err:
            problems.append(f"{where}: {err}")
            continue
        problems += [f"{where}: {problem}" for problem in config.validate()]
        for _, problem in missing_input_files(config, unresolved, kept_names) if check_input_files else ():
            missing_inputs.setdefault(problem, []).append(where)
        notes += config.deferred_checks()
        dependencies = tuple(dict.fromkeys(r for r in referenced if r in kept_names))
        runs.append(RunSpec(name, run.run_dir, config, index, run.overrides, dependencies,
                            {r: run_dirs[r] for r in dict.fromkeys(referenced)}))
    problems += summarize_missing_inputs(missing_inputs)
    if problems:
        raise PlanError(plan_path, list(dict.fromkeys(problems)))
    used = {k for c in settings["configurations"] for part in (c["base_config"], c.get("options", {})) for k in part}
    legacy = sorted(used & LEGACY_IGNORED_FIELDS)
    return Plan(plan_path, settings["name"], settings["description"], settings["num_parallel"],
                settings["multiprocess"], list(settings["gpu_ids_pool"]), settings["largest"],
                _order_by_references(runs, plan_path), legacy, list(dict.fromkeys(notes)))


def apply_overrides(raw_plan: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the parsed plan JSON with `overrides` set in every configuration's base_config (and the same
    fields removed from its options). A plan that is not an object with a configurations list is returned as
    is (its own validation reports it)."""
    if not overrides or not isinstance(raw_plan, dict) or not isinstance(raw_plan.get("configurations"), list):
        return raw_plan
    plan = copy.deepcopy(raw_plan)
    for configuration in plan["configurations"]:
        if not isinstance(configuration, dict) or not isinstance(configuration.get("base_config"), dict):
            continue
        configuration["base_config"].update(overrides)
        options = configuration.get("options")
        if isinstance(options, dict):
            configuration["options"] = {k: v for k, v in options.items() if k not in overrides}
    return plan


def load_plan(plan_path: Path, config_cls: type[RunConfig], *, check_input_files: bool = True,
              overrides: dict[str, Any] | None = None) -> Plan:
    """Read, validate and expand the plan file at `plan_path` (see module docstring). Raises PlanError.

    `overrides` (typed field values, e.g. from `--set`) are set in every configuration's base_config first
    (`apply_overrides`)."""
    plan_path = Path(plan_path)
    raw, problems = read_plan_json(plan_path)
    if problems:
        raise PlanError(plan_path, problems)
    return parse_plan(apply_overrides(raw, overrides or {}), plan_path, config_cls,
                      check_input_files=check_input_files)
