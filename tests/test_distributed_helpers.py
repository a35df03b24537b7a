"""The one home of the device rule and the main-process check (`common.distributed`)."""

from __future__ import annotations

import pytest
import torch

from common.distributed import is_main_process, launched_distributed, resolve_device


def test_resolve_device_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:3", assigned_gpu=1) == torch.device("cuda:3")  # explicit wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", assigned_gpu=2) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", assigned_gpu=2) == torch.device("cuda:2")
    assert resolve_device("auto") == torch.device("cuda:0")


@pytest.mark.parametrize(("rank", "world_size", "main", "distributed"),
                         [(None, None, True, False), ("0", "2", True, True), ("1", "2", False, True),
                          ("0", "1", True, False)])
def test_main_process_and_launch(monkeypatch: pytest.MonkeyPatch, rank: str | None, world_size: str | None,
                                 main: bool, distributed: bool) -> None:
    for name, value in (("RANK", rank), ("WORLD_SIZE", world_size)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert is_main_process() is main
    assert launched_distributed() is distributed
