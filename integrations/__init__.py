"""Integrations with other training libraries: likelihood-displacement tracking inside transformers / TRL trainers.

Names are imported on first use, so `python -m integrations.print_displacement` (JSON only) does not import torch.
"""

from importlib import import_module

_HOMES = {"DisplacementCallback": "trl_callback", "probe_logps": "trl_callback", "track_displacement": "trl_callback",
          "probe_pairs": "trl_probe", "format_displacement_table": "print_displacement",
          "read_run": "print_displacement"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'integrations' has no attribute {name!r}")
    return getattr(import_module(f"integrations.{_HOMES[name]}"), name)
