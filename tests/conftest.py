"""Shared test settings and the one way tests reach real (public) data files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.data_locations import find_local_data_file

# The project's own demo prompts (tracked in git, always present): persona tests that need no public data use them.
DEMO_PERSONA_DATASET = "data_files/persona/demo_statements.jsonl"
REAL_DATA_MISSING = "real data not found: set LD_DATA_DIR or place it in data_files/ (see data_files/README.md)"


def real_data(name: str) -> Path:
    """The local copy of a public data file by the data-location rule (data_files/NAME, then $LD_DATA_DIR/NAME).

    Skips the calling test (or fixture's tests), with the reason, when no local place holds it; never downloads.
    Call it inside a test or fixture: called at module level it would skip the whole module.
    """
    path = find_local_data_file(f"data_files/{name}")
    if path is None:
        pytest.skip(f"{REAL_DATA_MISSING} (needs {name})", allow_module_level=True)
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, and two pytest workers then use exactly the two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
