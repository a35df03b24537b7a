"""Mean and population standard deviation of a list of run values, with an explicit missing-value policy (torch-free).

    mean_std([1.0, 3.0, None], missing="skip_none")            -> (2.0, 1.0)
    mean_std([1.0, 3.0, None, nan], missing="skip_nonfinite")  -> (2.0, 1.0)

    mean = sum(v) / n,   std = sqrt(sum((v - mean)^2) / n)      (population std, ddof = 0)

over the n values the policy keeps, summed left to right (plain Python `sum`, the order the printers always used):
  - "skip_none": drop None; NaN/inf are kept (and propagate);
  - "skip_nonfinite": drop None, NaN and +-inf;
  - "keep": drop nothing (a None raises TypeError).
With nothing kept the result is (`empty`, `empty`).

Array statistics over many examples (`persona_experiments/reference_statistics.py`) use numpy's pairwise sum instead
and are not routed through here: the two sums can differ in the last bits, and each printer keeps its numbers.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, TypeVar

MissingPolicy = Literal["skip_none", "skip_nonfinite", "keep"]
MISSING_POLICIES = ("skip_none", "skip_nonfinite", "keep")
E = TypeVar("E", float, None)


def kept_values(values: Iterable[float | None], missing: MissingPolicy) -> list[float]:
    """The values `missing` keeps, as floats (see the module docstring)."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing: expected one of {MISSING_POLICIES}, got {missing!r}")
    if missing == "keep":
        return [float(v) for v in values]
    kept = [float(v) for v in values if v is not None]
    return [v for v in kept if math.isfinite(v)] if missing == "skip_nonfinite" else kept


def mean_std(values: Iterable[float | None], *, missing: MissingPolicy, empty: E = math.nan
             ) -> tuple[float | E, float | E]:
    """(mean, population std) of the values `missing` keeps; (`empty`, `empty`) when none is kept."""
    kept = kept_values(values, missing)
    if not kept:
        return empty, empty
    mean = sum(kept) / len(kept)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept))


def mean(values: Iterable[float | None], *, missing: MissingPolicy, empty: E = math.nan) -> float | E:
    """The mean of `mean_std` alone."""
    return mean_std(values, missing=missing, empty=empty)[0]
