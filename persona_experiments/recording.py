"""Everything the persona trainer records at a tracked step, on top of the shared DisplacementTracker.

At each tracked point (every step with full batch; the start of every epoch otherwise; and after training)
`PersonaRecorder.record` takes the detached last-position outputs of all N training prompts and
  - updates the DisplacementTracker (preferred/dispreferred log-probs, losses),
  - computes hidden-representation norms and their change since init,
  - reads the logits/log-probs of `track_logits_for_tokens`,
  - every `log_top_token_logit_change_interval` steps, at REFERENCE_TOP_TOKEN_STEPS and at the end: the top-k
    tokens by probability and
    log-prob increase since init (`token_tracking.top_token_changes`), appended to `top_tokens.jsonl`.
`tensors` and `summary` assemble the run's tensor file and summary entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from common.io_utils import jsonl_appender
from common.metric_keys import GEOMETRY_KEYS, geometry_key
from common.tracker import DisplacementTracker
from persona_experiments.geometry import hidden_norm_metrics
from persona_experiments.token_tracking import TopTokenChanges, describe_top_tokens, top_token_changes

TOP_TOKENS_FILE = "top_tokens.jsonl"
# Steps at which the reference results printer reads the top tokens by probability increase; recorded on top of
# the configured interval so `persona_experiments/reference_statistics.py` can report them.
REFERENCE_TOP_TOKEN_STEPS = (1, 5, 10, 25, 50, 100)


@dataclass
class PointValues:
    """Detached outputs for all N training prompts at one tracked point (rows in dataset order).

    Attributes:
        preferred_logps / dispreferred_logps: (N,) log pi(y+|x), log pi(y-|x).
        losses: (N,) per-example loss.
        hidden: (N, d) last-position hidden states.
        logits / logprobs: (N, V) next-token logits and log-probs (float32).
    """

    preferred_logps: Tensor
    dispreferred_logps: Tensor
    losses: Tensor
    hidden: Tensor
    logits: Tensor
    logprobs: Tensor


def token_metric_name(token_id: int, token: str) -> str:
    """Metric-safe name of a tracked token: `<id>_<alphanumerics>`, e.g. (3363, ' Yes') -> '3363_yes'."""
    cleaned = re.sub(r"[^a-z0-9]+", "_", token.lower()).strip("_")
    return f"{token_id}_{cleaned}" if cleaned else str(token_id)


class PersonaRecorder:
    """Per-run bookkeeping of tracked points (see module docstring).

    Args:
        initial: Values at initialisation (the reference pass); kept for the "since init" comparisons.
        preferred_ids / dispreferred_ids: (N,) y+ / y- ids.
        example_ids: Dataset rows of the prompts.
        tracked_token_ids / tracked_tokens: Extra tokens whose logit and log-prob are logged.
        tokenizer: For decoding top tokens.
        run_dir: Where top_tokens.jsonl is written.
        top_token_interval: Steps between top-token records (None = only first and last point).
        num_top_tokens: k.
        keep_finegrained: Keep the (N, V) log-probs of every top-token point for the tensor file.
    """

    def __init__(self, initial: PointValues, preferred_ids: Tensor, dispreferred_ids: Tensor, example_ids: list[int],
                 tracked_token_ids: list[int], tracked_tokens: list[str], tokenizer, run_dir: Path,
                 top_token_interval: int | None, num_top_tokens: int, keep_finegrained: bool):
        self.initial = initial
        self.preferred_ids = preferred_ids
        self.dispreferred_ids = dispreferred_ids
        self.tracker = DisplacementTracker(len(example_ids), example_ids=example_ids)
        self.tracked_token_ids = torch.tensor(tracked_token_ids, dtype=torch.long)
        self.tracked_names = [token_metric_name(i, t) for i, t in zip(tracked_token_ids, tracked_tokens)]
        self.tokenizer = tokenizer
        self.top_tokens_path = Path(run_dir) / TOP_TOKENS_FILE
        self.top_token_interval = top_token_interval
        self.num_top_tokens = num_top_tokens
        self.keep_finegrained = keep_finegrained
        self.hidden_norms: list[Tensor] = []          # each (N,) ||h_t||
        self.hidden_distances: list[Tensor] = []      # each (N,) ||h_t - h_0||
        self.tracked_logits: list[Tensor] = []        # each (N, K)
        self.tracked_logprobs: list[Tensor] = []      # each (N, K)
        self.top_token_steps: list[int] = []
        self._last_interval_step: int | None = None
        self.top_token_changes: list[TopTokenChanges] = []
        self.finegrained_logprobs: list[Tensor] = []  # each (N, V)
        self.last_hidden_metrics: dict[str, Tensor] = {}

    def top_tokens_due(self, step: int, is_final: bool) -> bool:
        """First point, final point, a REFERENCE_TOP_TOKEN_STEPS step, or `top_token_interval` steps since the
        last interval record (records made only for REFERENCE_TOP_TOKEN_STEPS do not shift the interval grid)."""
        interval = self.top_token_interval
        due_by_interval = (self._last_interval_step is None
                           or (interval is not None and step - self._last_interval_step >= interval))
        if due_by_interval:
            self._last_interval_step = step
        return is_final or due_by_interval or step in REFERENCE_TOP_TOKEN_STEPS

    def record(self, step: int, values: PointValues, is_final: bool = False) -> dict[str, float]:
        """Record one tracked point; returns the scalars to log at `step`."""
        scalars = self.tracker.update(step, values.preferred_logps, values.dispreferred_logps, values.losses)
        hidden = hidden_norm_metrics(values.hidden, self.initial.hidden)
        self.last_hidden_metrics = hidden
        self.hidden_norms.append(hidden["hidden_norm"])
        self.hidden_distances.append(hidden["hidden_distance"])
        scalars.update({f"hidden/{name.removeprefix('hidden_')}_mean": float(v.mean()) for name, v in hidden.items()})
        for name, ids in (("chosen", self.preferred_ids), ("rejected", self.dispreferred_ids)):
            scalars[f"logits/{name}"] = float(values.logits.gather(1, ids.to(values.logits.device).view(-1, 1)).mean())
        if len(self.tracked_token_ids):
            ids = self.tracked_token_ids.to(values.logits.device)
            logits = values.logits[:, ids].detach().double().cpu()
            logprobs = values.logprobs[:, ids].detach().double().cpu()
            self.tracked_logits.append(logits)
            self.tracked_logprobs.append(logprobs)
            for column, name in enumerate(self.tracked_names):
                scalars[f"tracked/{name}/logit"] = float(logits[:, column].mean())
                scalars[f"tracked/{name}/logprob"] = float(logprobs[:, column].mean())
        if self.top_tokens_due(step, is_final):
            scalars.update(self._record_top_tokens(step, values.logprobs))
        return scalars

    def _record_top_tokens(self, step: int, logprobs: Tensor) -> dict[str, float]:
        changes = top_token_changes(logprobs, self.initial.logprobs.to(logprobs.device), self.preferred_ids,
                                    self.num_top_tokens)
        self.top_token_steps.append(step)
        self.top_token_changes.append(changes)
        if self.keep_finegrained:
            self.finegrained_logprobs.append(logprobs.detach().float().cpu())
        record = {"step": step, "examples": [
            {"example_id": example_id, **describe_top_tokens(changes, self.tokenizer, index)}
            for index, example_id in enumerate(self.tracker.example_ids)]}
        with jsonl_appender(self.top_tokens_path) as writer:
            writer.write(record)
        return {
            "tokens/preferred_rank_by_prob_increase_mean": float(changes.preferred_rank_by_prob_increase.double().mean()),
            "tokens/preferred_rank_by_logprob_increase_mean":
                float(changes.preferred_rank_by_logprob_increase.double().mean()),
            "tokens/top_prob_increase_mean": float(changes.prob_increase_values[:, 0].mean()),
            "tokens/top_logprob_increase_mean": float(changes.logprob_increase_values[:, 0].mean()),
        }

    def tensors(self, geometry_start: dict[str, Tensor], geometry_end: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra tensors for the tracker's tensor file (keys prefixed by concern)."""
        out = {"tokens/preferred_ids": self.preferred_ids.cpu(), "tokens/dispreferred_ids": self.dispreferred_ids.cpu(),
               "hidden/norms": torch.stack(self.hidden_norms),            # (T, N)
               "hidden/distances": torch.stack(self.hidden_distances)}    # (T, N)
        for key in GEOMETRY_KEYS:
            out[geometry_key("start", key)] = geometry_start[key]
            out[geometry_key("end", key)] = geometry_end[key]
        if self.tracked_logits:
            out["tracked/token_ids"] = self.tracked_token_ids
            out["tracked/logits"] = torch.stack(self.tracked_logits)      # (T, N, K)
            out["tracked/logprobs"] = torch.stack(self.tracked_logprobs)  # (T, N, K)
        out["top_tokens/steps"] = torch.tensor(self.top_token_steps, dtype=torch.long)
        for name in ("prob_increase_ids", "prob_increase_values", "logprob_increase_ids", "logprob_increase_values",
                     "preferred_rank_by_prob_increase", "preferred_rank_by_logprob_increase"):
            out[f"top_tokens/{name}"] = torch.stack([getattr(c, name) for c in self.top_token_changes])  # (P, N, ...)
        if self.finegrained_logprobs:
            out["finegrained/logprobs"] = torch.stack(self.finegrained_logprobs)  # (P, N, V)
        return out

    def summary(self, geometry_start: dict[str, Tensor], geometry_end: dict[str, Tensor]) -> dict:
        """Summary entries: tracker aggregates, geometry (means over examples), hidden norms, final top tokens."""
        out: dict = dict(self.tracker.summary())
        for key in GEOMETRY_KEYS:
            out[geometry_key("start", key)] = float(geometry_start[key].mean())
            out[geometry_key("end", key)] = float(geometry_end[key].mean())
        for name, values in self.last_hidden_metrics.items():
            out[f"final_{name}_mean"] = float(values.mean())
        out["initial_hidden_norm_mean"] = float(self.hidden_norms[0].mean())
        final_changes = self.top_token_changes[-1]
        out["final_preferred_rank_by_prob_increase_mean"] = float(
            final_changes.preferred_rank_by_prob_increase.double().mean())
        out["final_preferred_rank_by_logprob_increase_mean"] = float(
            final_changes.preferred_rank_by_logprob_increase.double().mean())
        out["final_top_tokens"] = [
            {"example_id": example_id, **describe_top_tokens(final_changes, self.tokenizer, index)}
            for index, example_id in enumerate(self.tracker.example_ids)]
        return out
