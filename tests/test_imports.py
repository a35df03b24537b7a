"""Every module of the project imports (a broken import fails here, it never becomes a skip), and importing a
top-level script runs nothing: no output, no exit, no files written."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("common", "ches", "preference_training", "persona_experiments", "preference_similarity",
                   "sorrybench", "integrations", "examples", "bench")


def project_modules() -> list[str]:
    """Dotted names of every .py file in the package folders plus the top-level scripts (sorted)."""
    names = [path.stem for path in ROOT.glob("*.py")]
    for folder in PACKAGE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def test_module_walk_finds_the_project() -> None:
    names = project_modules()
    for expected in ("common.io_utils", "preference_training.selection", "sorrybench.judge_factory",
                     "persona_experiments.trainer",
                     "preference_similarity.experiment", "compute_preference_similarity_per_example",
                     "sorrybench_experiment_runner", "bench.flop_floor"):
        assert expected in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", project_modules())
def test_module_imports_and_runs_nothing(name: str, capsys: pytest.CaptureFixture, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a script that ran on import would write here
    importlib.import_module(name)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert os.listdir(tmp_path) == []
