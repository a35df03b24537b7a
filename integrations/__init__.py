"""Integrations with other training libraries: likelihood-displacement tracking inside transformers / TRL trainers."""

from integrations.trl_callback import (DisplacementCallback, format_displacement_table, probe_logps,
                                       track_displacement)
from integrations.trl_probe import probe_pairs

__all__ = ["DisplacementCallback", "format_displacement_table", "probe_logps", "probe_pairs", "track_displacement"]
