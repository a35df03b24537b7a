"""Strict reading of a plan file: every way a file can fail to be a plan becomes a list of one-line problems.

    raw, problems = read_plan_json(Path("plan.json"))

Python's `json` module accepts things a plan must not contain, and crashes on others; here:
    - a directory, a missing file, non-UTF-8 bytes -> one problem naming the path (and the byte offset);
    - duplicate keys in one object (json keeps the last value silently) -> one problem per key;
    - `NaN`, `Infinity`, `-Infinity` literals and numbers that overflow to infinity (`1e999`) -> one problem each;
    - nesting deeper than `MAX_NESTING_DEPTH` (a 100k-deep file overflows the parser's recursion) -> one problem.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_NESTING_DEPTH = 64  # plans nest 4 levels (plan, configurations, base_config, lists); 64 is generous


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (a linear scan, no recursion)."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def read_plan_json(plan_path: Path) -> tuple[Any, list[str]]:
    """The parsed plan and the problems found reading it (the value is None when it cannot be parsed)."""
    if plan_path.is_dir():
        return None, [f"{plan_path} is a directory; pass the path of a JSON plan file (e.g. {plan_path}/plan.json)"]
    try:
        data = plan_path.read_bytes()
    except FileNotFoundError:
        return None, ["plan file not found; check the path passed as --plan_config_path"]
    except OSError as err:
        return None, [f"cannot read the plan file: {err.strerror or err}"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, [f"the plan file is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); save it as UTF-8"]
    if _nesting_depth_exceeds(text, MAX_NESTING_DEPTH):
        return None, [f"the plan nests objects/lists deeper than {MAX_NESTING_DEPTH} levels; a plan needs 4"]
    problems: list[str] = []

    def reject_constant(name: str) -> float:
        problems.append(f"'{name}' is not a valid JSON number; write a finite number")
        return math.nan

    def checked_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            problems.append(f"number {literal} overflows to infinity; write a finite number")
        return value

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                problems.append(f"duplicate key '{key}' in one object (JSON keeps only the last value); "
                                "remove one of them")
            seen[key] = value
        return seen

    try:
        raw = json.loads(text, object_pairs_hook=unique_keys, parse_constant=reject_constant,
                         parse_float=checked_float)
    except json.JSONDecodeError as err:
        return None, [f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"]
    except RecursionError:  # defensive: the depth scan above should have caught it
        return None, ["the plan nests too deeply to parse"]
    return raw, list(dict.fromkeys(problems))
