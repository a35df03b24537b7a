"""Gradient-entanglement diagnostics inside dataset-level training (issue 6; formulas in
`common/grad_entanglement.py`). Off, and free, unless `grad_entanglement_interval` is set.

Every `grad_entanglement_interval` optimizer steps (step 0 included), before the update, the first
`grad_entanglement_max_examples` training pairs get g+ = grad log pi(y+|x) and g- = grad log pi(y-|x) over the
`grad_entanglement_params` subset (two extra backward passes each, main process only, on the unwrapped model).
After the update their log-probs are measured again and the first-order predictions are scored against the
observed change. Logged at the step of that update as `grad_entanglement/<stat>` (means over the examples);
the summary holds the means over all measured points. The bookkeeping is
`common.grad_entanglement.EntanglementLog` (the persona trainer's too); this probe adds only the extra forward
passes on a fixed set of pairs. For length-normalised objectives (simpo, rrhf, orpo, ipo with
`ipo_length_normalized`) the per-token log-probs pi/|y| enter, as the margin uses them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from common.distributed import ProcessGroup
from common.grad_entanglement import EntanglementLog, gradient_entanglement, is_due, select_parameters
from common.metric_keys import GRAD_ENTANGLEMENT_NUM_POINTS
from common.preference_data import TokenizedPair
from common.sequence_logprobs import pair_logps

LENGTH_NORMALIZED_OBJECTIVES = ("simpo", "rrhf", "orpo")


class EntanglementProbe:
    """Measures gradient entanglement on a few training pairs around selected optimizer steps.

    Args:
        config: A `PreferenceTrainingConfig` (uses the grad_entanglement_* and loss fields).
        pairs: Training pairs; the first `grad_entanglement_max_examples` are probed.
        options: `LogpsOptions` of the run (share_prompt, keep_logits).
        group: Process group; only the main process measures.
    """

    def __init__(self, config, pairs: Sequence[TokenizedPair], options, group: ProcessGroup):
        self.interval = config.grad_entanglement_interval
        self.subset = config.grad_entanglement_params
        self.pairs = list(pairs[: config.grad_entanglement_max_examples])
        self.per_token = config.objective in LENGTH_NORMALIZED_OBJECTIVES or (
            config.objective == "ipo" and config.ipo_length_normalized)
        self.options, self.group = options, group
        self.measured: dict[str, float] = {}  # the logged means of the pending step's statistics
        self.log = EntanglementLog()

    @property
    def active(self) -> bool:
        return self.interval is not None and self.group.is_main

    def _logps(self, model: torch.nn.Module, pair: TokenizedPair) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = pair_logps(model, pair, share_prompt=self.options.share_prompt,
                                      keep_logits=self.options.keep_logits)
        if self.per_token:
            return chosen / len(pair.chosen_ids), rejected / len(pair.rejected_ids)
        return chosen, rejected

    def before_step(self, model: torch.nn.Module, step: int) -> None:
        """Gradients at the current parameters if the diagnostics are due at optimizer step `step` (0-based)."""
        if not self.active or not is_due(self.interval, step):
            return
        unwrapped = self.group.unwrap(model)
        params = select_parameters(unwrapped, self.subset)
        with torch.enable_grad():
            self.measured = self.log.measure(
                gradient_entanglement(params, (self._logps(unwrapped, pair) for pair in self.pairs)))

    def after_step(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Score the pending predictions against the log-probs after the update; scalars to log (or {})."""
        if not self.log.pending:
            return {}
        unwrapped = self.group.unwrap(model)
        with torch.no_grad():
            after = [self._logps(unwrapped, pair) for pair in self.pairs]
        scores = self.log.score([float(c) for c, _ in after], [float(r) for _, r in after])
        return {**self.measured, **scores}

    def summary(self) -> dict[str, float]:
        """Means over the measured points of every logged statistic (NaNs skipped), plus the point count."""
        return self.log.summary_over_points(GRAD_ENTANGLEMENT_NUM_POINTS)
