"""Layering: `common/` is the ground floor; none of its modules imports a package above it (top-level or lazy
imports inside functions alike), read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER_PACKAGES = ("ches", "preference_training", "persona_experiments", "preference_similarity", "sorrybench",
                  "integrations", "bench", "examples")


def imported_packages(path: Path) -> set[str]:
    """First dotted component of every absolute import in `path` (relative imports count as the own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_reads_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom common.io_utils import x\n\ndef f():\n    from ches.ches import y\n"
                      "    import sorrybench.judges as j\n")
    assert imported_packages(source) == {"os", "common", "ches", "sorrybench"}


def test_common_imports_no_higher_layer() -> None:
    offenders = {path.relative_to(ROOT).as_posix(): sorted(imported_packages(path) & set(UPPER_PACKAGES))
                 for path in sorted((ROOT / "common").rglob("*.py"))}
    assert {name: upper for name, upper in offenders.items() if upper} == {}


# Each package and the project packages it may import (docs/ARCHITECTURE.md, "Layers"); the entry points above
# them (top-level scripts, examples/, bench/, tests/) may import any.
ALLOWED_IMPORTS = {
    "common": set(),
    "ches": {"common"},
    "preference_training": {"common", "ches"},
    "persona_experiments": {"common"},
    "preference_similarity": {"common", "ches", "preference_training"},
    "sorrybench": {"common", "ches", "preference_training"},
    "integrations": {"common", "persona_experiments"},
}


def test_every_layer_imports_only_the_layers_below_it() -> None:
    project = set(ALLOWED_IMPORTS) | set(UPPER_PACKAGES)
    offenders = {}
    for package, allowed in ALLOWED_IMPORTS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            upward = sorted((imported_packages(path) & project) - allowed - {package})
            if upward:
                offenders[path.relative_to(ROOT).as_posix()] = upward
    assert offenders == {}
