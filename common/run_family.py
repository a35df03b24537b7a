"""Which experiment family wrote a run directory, told from its config.json, so a printer can refuse a directory
of another family with one clear line instead of printing an empty or misleading table.

A family is recognised by a field only its config class has (checked in this order, since the SORRY-Bench config
extends the dataset-level one):
    sorrybench             `refusal_judge`                (sorrybench/experiment.py, SorryBenchConfig)
    persona                `output_tokens_matching_yes`   (persona_experiments/config.py, PersonaConfig)
    preference_similarity  `pref_similarity_measure`      (preference_training/config.py)
Anything else (a test family, a foreign directory) is None.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

FAMILY_FIELDS = (("sorrybench", "refusal_judge"), ("persona", "output_tokens_matching_yes"),
                 ("preference_similarity", "pref_similarity_measure"))
PRINTERS = {"sorrybench": "sorrybench_results_printer.py", "persona": "persona_single_example_results_printer.py",
            "preference_similarity": "preference_similarity_results_printer.py"}


def family_of_config(config: dict) -> str | None:
    """The family whose config has the fields of `config` (see the module docstring), None if unknown.
    Example: {"refusal_judge": "keyword", "pref_similarity_measure": "ches_scores"} -> "sorrybench"."""
    return next((family for family, field in FAMILY_FIELDS if field in config), None)


def families_under(directory: Path) -> Counter:
    """How many run directories (holding config.json and status.json) under `directory` each family has."""
    counts: Counter = Counter()
    for status_file in Path(directory).rglob("status.json"):
        try:
            config = json.loads((status_file.parent / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            counts[family_of_config(config)] += 1
    return counts


def other_family_error(directory: Path, expected: tuple[str, ...], flag: str) -> str | None:
    """A one-line error when the runs under `directory` all belong to known families other than `expected`,
    naming them and the printer to use; None when some run is of an expected (or unknown) family or none is found.
    """
    counts = families_under(directory)
    if not counts or any(family in expected or family is None for family in counts):
        return None
    found = ", ".join(f"{count} {family}" for family, count in sorted(counts.items()))
    printers = ", ".join(PRINTERS[family] for family in sorted(counts))
    return (f"{flag} {directory}: holds runs of another experiment family ({found} run(s), told from config.json); "
            f"this printer reads {' or '.join(expected)} runs; use {printers}")
