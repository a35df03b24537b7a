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


def assert_close_at_precision(actual: torch.Tensor, expected: torch.Tensor, *, ulps: float = 64.0) -> None:
    """Two computations of the same tensor in a floating dtype agree up to that dtype's rounding.

    With eps = torch.finfo(expected.dtype).eps (float32: 1.19e-7; float64: 2.2e-16) and M = max |expected|:
        elementwise  |actual - expected| <= ulps * eps * (|expected| + M)
        normwise     ||actual - expected|| <= ulps * eps * ||expected||
    Why the absolute part scales with M: each entry of a gradient or a logit is a long sum of products, so its
    rounding error follows the size of the terms feeding it, not its own size; an entry that cancels to near zero
    keeps the absolute error of its terms. A fixed `atol=1e-6` is therefore below the rounding of float32 sums
    whose terms are ~10 (1 element of 3.4M was off by 1.4e-6 in tiny-gpt2's gradient). ulps 64 leaves a wide
    margin over the measured differences (at most 5 eps x M per parameter tensor) while an actual bug (a wrong
    position, a missing term) gives errors of the order of M itself.
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    eps = torch.finfo(expected.dtype).eps
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=ulps * eps, atol=ulps * eps * scale)
    difference, size = float((actual - expected).norm()), float(expected.norm())
    assert difference <= ulps * eps * size, f"normwise difference {difference:.3g} > {ulps} eps x {size:.3g}"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, and two pytest workers then use exactly the two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
