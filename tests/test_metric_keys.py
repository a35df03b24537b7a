"""The output contract: every metric key docs/ARCHITECTURE.md lists is a name of common/metric_keys.py, and the
step record both trainers log is built the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import metric_keys as mk

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def contract_names() -> set[str]:
    """Every string constant of common/metric_keys.py, and the strings inside its tuple constants."""
    names: set[str] = set()
    for name, value in vars(mk).items():
        if name.isupper() and isinstance(value, str):
            names.add(value)
        elif name.isupper() and isinstance(value, tuple):
            names.update(v for v in value if isinstance(v, str))
    return names


def documented_keys() -> list[str]:
    """The backticked tokens of the 'Metric names' section that are keys (not file paths or functions)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Metric names"):text.index("## Tests")]
    tokens = re.findall(r"`([^`\n]+)`", section)
    return [t for t in tokens if not t.endswith((".py", ".md", ".jsonl", ".json", ".safetensors"))
            and t not in ("step_record", "max_grad_norm") and "<split>" not in t]


def test_every_documented_key_is_a_constant():
    keys = documented_keys()
    assert len(keys) > 30  # the section lists the contract, not a sample
    assert [key for key in keys if key not in contract_names()] == []


def test_step_record_names_the_batch_means_in_order():
    record = mk.step_record([0.5, 0.25, -0.25, 0.5, 1.0, -5.0, -7.0], lr=1e-6, epoch=2)
    assert record == {"loss": 0.5, "rewards/chosen": 0.25, "rewards/rejected": -0.25, "rewards/margins": 0.5,
                      "rewards/accuracies": 1.0, "logps/chosen": -5.0, "logps/rejected": -7.0, "lr": 1e-6, "epoch": 2}
    with pytest.raises(ValueError, match="expected 7 batch means"):
        mk.step_record([0.5], lr=1e-6, epoch=1)


def test_key_templates():
    assert mk.tracker_key("train", mk.PREFERRED_LOGPROB_CHANGE_MEAN) == "tracker/train/preferred_logprob_change_mean"
    assert mk.geometry_key("end", "cosine") == "geometry/end/cosine"
    assert mk.TRAINING_TRACKER_PREFIX["sorrybench"] == mk.TRACKER_PREFIX.format(split="train")
