"""Plan-runner command-line options: `--set key=value` overrides, `--only RUN` selection, `--list_fields`.

    python <family>_experiment_plan_runner.py --plan_config_path PLAN.json --set lr=1e-6 --set epochs=2
    python <family>_experiment_plan_runner.py --plan_config_path PLAN.json --only dpo_run --only ipo_run
    python <family>_experiment_plan_runner.py --list_fields

Rules:
  * `--set key=value` (repeatable) sets config field `key` in every configuration's `base_config` before
    expansion; an option list of the same field is dropped (the override wins for every run). The value is read
    by the field's type: `true`/`false` for booleans, numbers for int/float, `null`/`none` for optional fields,
    JSON for lists and dicts, the text itself for strings. An unknown key or a value of the wrong type is an
    `OverrideError` naming the key (with close field names).
  * `--only RUN` (repeatable) keeps the runs of that experiment name, plus the `{run:...}` parents they need that
    are not already done with the same config and inputs. Unknown names are a `SelectionError` with suggestions.
  * `--list_fields` prints each field of a family's config with its type, default and meaning (read from the
    "Attributes:" / "name (`type`, defaults to ...):" entries of the config classes' docstrings).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.plan import Plan, RunSpec, load_plan
from common.plan_checks import suggest_fields, type_name
from common.run_state import finished_state, run_identity

TRUE_WORDS, FALSE_WORDS, NULL_WORDS = ("true", "yes", "1"), ("false", "no", "0"), ("null", "none")
# A docstring entry: `name: text`, `name (`type`, defaults to `x`): text` or `a, b: text`.
DOC_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:, [A-Za-z_]\w*)*)(?: \([^)]*\))?:(?: (?P<text>.*))?$")


class OverrideError(ValueError):
    """A `--set` that names no config field or whose value does not fit the field's type."""


class SelectionError(ValueError):
    """An `--only` name that is no run of the plan."""


def _parse_typed(text: str, annotation: Any) -> Any:
    """`text` read as a value of `annotation`; raises ValueError when it cannot be one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if type(None) in arguments and text.strip().lower() in NULL_WORDS:
            return None
        for argument in (a for a in arguments if a is not type(None)):
            try:
                return _parse_typed(text, argument)
            except ValueError:
                continue
        raise ValueError(text)
    if annotation is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(text)
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    if annotation is str:
        return text
    value = json.loads(text)  # lists, dicts, anything else: JSON
    wants_list, wants_dict = origin in (list, tuple), origin is dict or annotation is dict
    if (wants_list and not isinstance(value, list)) or (wants_dict and not isinstance(value, dict)):
        raise ValueError(text)
    return value


def parse_overrides(assignments: list[str], config_cls: type[RunConfig]) -> dict[str, Any]:
    """`["lr=1e-6", "use_lora=true"]` -> `{"lr": 1e-06, "use_lora": True}`, typed by `config_cls`'s fields.

    Raises OverrideError for a missing '=', an unknown field (with suggestions) or a value of the wrong type."""
    hints = typing.get_type_hints(config_cls)
    known = [f.name for f in dataclasses.fields(config_cls)]
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        if not equals or not key:
            raise OverrideError(f"--set {assignment!r}: expected key=value (e.g. --set lr=1e-6)")
        if key not in known:
            close = suggest_fields(key, known)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "see --list_fields"
            raise OverrideError(f"--set {key}: unknown field '{key}' of {config_cls.__name__} ({hint})")
        try:
            overrides[key] = _parse_typed(text, hints[key])
        except (ValueError, json.JSONDecodeError):
            raise OverrideError(f"--set {key}={text}: field '{key}' must be {type_name(hints[key])}, got {text!r}"
                                ) from None
    return overrides


def select_runs(plan: Plan, names: list[str]) -> list[RunSpec]:
    """The runs named `names` and the `{run:...}` parents they need that are not done yet, in plan order.

    A parent that is already done (same config, inputs and parents, `common.run_state.finished_state`) is left
    out, and the selected runs no longer wait for it. Raises SelectionError for a name that is no run."""
    by_name = {spec.name: spec for spec in plan.runs}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        lines = [f"'{name}'" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                if (close := difflib.get_close_matches(name, by_name, n=3)) else "")
                 for name in unknown]
        raise SelectionError(f"--only: no run named {', '.join(lines)} in plan '{plan.name}'; "
                             f"the runs are listed by --dry_run")
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for parent in by_name[name].depends_on:
            spec = by_name[parent]
            done, _ = finished_state(spec.run_dir, spec.config, run_identity(spec.config, spec.references))
            if not done:
                pending.append(parent)
    return [dataclasses.replace(spec, depends_on=tuple(d for d in spec.depends_on if d in wanted))
            for spec in plan.runs if spec.name in wanted]


def add_plan_selection_options(parser: argparse.ArgumentParser) -> None:
    """Add `--set KEY=VALUE`, `--only RUN` (both repeatable) and `--list_fields` to a plan runner's parser."""
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="set config field KEY in every configuration's base_config (repeatable; typed by "
                             "the field: --set lr=1e-6 --set use_lora=true)")
    parser.add_argument("--only", action="append", default=[], metavar="RUN",
                        help="run only this experiment (repeatable), plus the {run:...} parents it needs that "
                             "are not done yet")
    parser.add_argument("--list_fields", action="store_true",
                        help="print the config fields (type, default, meaning) and exit")


def load_selected_plan(plan_path: Path, config_cls: type[RunConfig], assignments: list[str],
                       only: list[str]) -> Plan:
    """The plan with the `--set` assignments applied and, with `only`, just the selected runs.

    Raises OverrideError, SelectionError or `common.plan.PlanError`."""
    plan = load_plan(plan_path, config_cls, overrides=parse_overrides(assignments, config_cls))
    return dataclasses.replace(plan, runs=select_runs(plan, only)) if only else plan


def field_meanings(config_cls: type) -> dict[str, str]:
    """Field name -> its description in the docstrings of `config_cls` and its bases (the subclass wins)."""
    meanings: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        current: list[str] = []
        for line in (cls.__doc__ or "").splitlines():
            stripped = line.strip()
            match = DOC_ENTRY.match(stripped)
            if match and line.startswith(" ") and len(line) - len(line.lstrip()) <= 8:
                current = [name.strip() for name in match["names"].split(",")]
                for name in current:
                    meanings[name] = (match["text"] or "").strip()
            elif current and stripped and len(line) - len(line.lstrip()) > 8:
                for name in current:
                    meanings[name] = f"{meanings[name]} {stripped}".strip()
            else:
                current = []
    return meanings


def format_fields(family_name: str, config_cls: type[RunConfig]) -> str:
    """One block per field: `name  (type, default VALUE)` and its meaning, indented."""
    hints = typing.get_type_hints(config_cls)
    meanings = field_meanings(config_cls)
    lines = [f"fields of {family_name} ({config_cls.__module__}.{config_cls.__name__}):"]
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = json.dumps(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = json.dumps(f.default_factory())
        else:
            default = "required"
        lines.append(f"  {f.name}  ({type_name(hints[f.name])}, default {default})")
        lines.append(f"      {meanings.get(f.name, '(not documented)')}")
    return "\n".join(lines)
