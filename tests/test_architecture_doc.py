"""docs/ARCHITECTURE.md names only paths that exist: every `folder/`, `path/file.py` and bare `file.py` in
backticks (a bare name belongs to the folder named last before it, else to the repository root; `*` globs must
match). Keys such as `logps/chosen` are not paths (no .py/.md ending, no existing top-level folder)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PATH_LIKE = re.compile(r"^[A-Za-z0-9_.*/-]+$")


def named_paths(text: str) -> list[tuple[str, Path]]:
    """(token, where it should be) for every path-like backticked token, in document order."""
    base = ROOT
    found = []
    for token in re.findall(r"`([^`\n]+)`", text):
        if not PATH_LIKE.match(token):
            continue
        is_file = token.endswith((".py", ".md"))
        if token.endswith("/") and (ROOT / token.split("/")[0]).is_dir():
            base = ROOT / token
            found.append((token, ROOT / token))
        elif is_file and "/" in token:
            found.append((token, ROOT / token))
        elif is_file:
            found.append((token, base / token if (base / token).exists() or "*" in token else ROOT / token))
    return found


def exists(path: Path) -> bool:
    return any(path.parent.glob(path.name)) if "*" in path.name else path.exists()


def test_named_paths_resolves_bare_names() -> None:
    text = "`common/` has `plan.py`; `logps/chosen` is a key; `tests/test_layers.py`; `README.md`"
    assert [(token, path.relative_to(ROOT).as_posix()) for token, path in named_paths(text)] == [
        ("common/", "common"), ("plan.py", "common/plan.py"), ("tests/test_layers.py", "tests/test_layers.py"),
        ("README.md", "README.md")]


def test_every_path_in_the_architecture_doc_exists() -> None:
    paths = named_paths(DOC.read_text(encoding="utf-8"))
    assert len(paths) > 60  # the layer table names every module
    assert [token for token, path in paths if not exists(path)] == []


def test_every_module_of_the_lower_layers_is_in_the_layer_table() -> None:
    named = {path for _, path in named_paths(DOC.read_text(encoding="utf-8"))}
    modules = {path for package in ("common", "ches", "preference_training")
               for path in (ROOT / package).glob("*.py") if path.name != "__init__.py"}
    assert sorted(p.relative_to(ROOT).as_posix() for p in modules - named) == []
