"""Likelihood-displacement tracker: per-example preferred/dispreferred log-probs over training steps.

Used by the persona single-token trainer and the dataset-level preference trainer. The trainer calls
`DisplacementTracker.update(step, preferred_logprobs, dispreferred_logprobs, losses)` at every training step
(or evaluation point) with one value per tracked example; the first call is the initial point. Everything is
kept on the CPU in float64, `O(N)` work per update (no sorting, no vocabulary-sized tensors).

Definitions (per example; p_t = exp(log pi_t(y+|x)) is the preferred probability at update t):
    preferred log-prob change since init    log pi_t(y+|x) - log pi_0(y+|x)            (nats)
    preferred fell since init / since prev  p_t < p_0  /  p_t < p_{t-1}
    loss fell since prev                    loss_t < loss_{t-1}
    largest decrease                        max_{t < t'} (p_t - p_t')   (0 if p never decreases)
    initial / min / final preferred prob    p_0, min_t p_t, p_T

Pure formula helpers (`largest_decrease`, `largest_decrease_per_example`) are public so tests and printers
use the same definition.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from common import metric_keys as mk
from common.io_utils import atomic_write_via


def largest_decrease_per_example(values: Tensor) -> Tensor:
    """Largest decrease max_{t < t'} (values[t] - values[t']) of each column, 0 if a column never decreases.

    Computed in O(T N) as max_t' (cummax_{t <= t'} values[t] - values[t']), clamped at 0.

    Args:
        values: (T, N) trajectory, one column per example (T >= 1).

    Returns:
        (N,) tensor of non-negative decreases, in the units of `values`.
    """
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"largest_decrease_per_example: expected a (T, N) tensor with T >= 1, "
                         f"got shape {tuple(values.shape)}")
    running_max = torch.cummax(values, dim=0).values
    return (running_max - values).max(dim=0).values.clamp_min(0.0)


def largest_decrease(values: Tensor) -> float:
    """Largest decrease max_{t < t'} (values[t] - values[t']) of a (T,) trajectory; 0 if it never decreases.

    Example: [0.5, 0.7, 0.2, 0.6, 0.1] -> 0.7 - 0.1 = 0.6.
    """
    if values.ndim != 1:
        raise ValueError(f"largest_decrease: expected a 1-D tensor, got shape {tuple(values.shape)}")
    return float(largest_decrease_per_example(values.unsqueeze(1))[0])


def _as_cpu_vector(name: str, values: Tensor, num_examples: int) -> Tensor:
    """Detach `values` to a CPU float64 (N,) tensor, checking its shape."""
    values = values.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if values.numel() != num_examples:
        raise ValueError(f"DisplacementTracker.update: {name} has {values.numel()} values, "
                         f"expected one per tracked example ({num_examples})")
    return values


class DisplacementTracker:
    """Per-example likelihood-displacement bookkeeping over training steps (or eval points).

    Args:
        num_examples: N, the number of tracked examples (every `update` passes N values).
        example_ids: Optional dataset indices of the tracked examples (default 0..N-1), saved with the tensors.
        loss_increase_tolerance: A loss counts as having increased between consecutive updates only if it
            grew by more than this (absolute, in loss units), so float round-off is not reported. Default 1e-7.
    """

    def __init__(self, num_examples: int, *, example_ids: list[int] | None = None,
                 loss_increase_tolerance: float = 1e-7):
        if num_examples < 1:
            raise ValueError(f"DisplacementTracker: num_examples must be >= 1, got {num_examples}")
        if example_ids is not None and len(example_ids) != num_examples:
            raise ValueError(f"DisplacementTracker: example_ids has {len(example_ids)} entries, "
                             f"expected num_examples={num_examples}")
        self.num_examples = num_examples
        self.example_ids = list(example_ids) if example_ids is not None else list(range(num_examples))
        self.loss_increase_tolerance = loss_increase_tolerance
        self.steps: list[int] = []
        self._preferred: list[Tensor] = []      # each (N,) log pi_t(y+|x)
        self._dispreferred: list[Tensor] = []   # each (N,) log pi_t(y-|x)
        self._losses: list[Tensor] = []         # each (N,), only if losses are passed
        # Running state so each update is O(N).
        self._max_prob_so_far: Tensor | None = None
        self._largest_decrease = torch.zeros(num_examples, dtype=torch.float64)
        self._min_prob: Tensor | None = None
        self._num_fell_since_prev = torch.zeros(num_examples, dtype=torch.int64)
        self._loss_ever_increased = torch.zeros(num_examples, dtype=torch.bool)
        self._mean_loss_ever_increased = False

    @property
    def num_updates(self) -> int:
        """Number of recorded points (including the initial one)."""
        return len(self.steps)

    def update(self, step: int, preferred_logprobs: Tensor, dispreferred_logprobs: Tensor,
               losses: Tensor | None = None) -> dict[str, float]:
        """Record per-example log-probs at `step`; the first call is the initial point.

        Args:
            step: Training step (or eval point) index; must increase from call to call.
            preferred_logprobs: (N,) log pi(y+|x), summed over the response tokens (nats).
            dispreferred_logprobs: (N,) log pi(y-|x).
            losses: Optional (N,) per-example losses at this step (pass them at every update or never).

        Returns:
            Scalars to log at this step (means over the N tracked examples), all under 'displacement/' so they
            never share a key with a trainer's mini-batch statistics (`loss`, `logps/chosen`, ...):
            'displacement/preferred_logprob_mean', 'displacement/dispreferred_logprob_mean',
            'displacement/preferred_prob_mean', 'displacement/dispreferred_prob_mean',
            'displacement/preferred_logprob_change_mean', 'displacement/dispreferred_logprob_change_mean',
            'displacement/frac_preferred_fell_since_init', 'displacement/frac_preferred_fell_since_prev',
            'displacement/largest_preferred_prob_decrease_mean' (so far), and, with losses,
            'displacement/loss_mean' and 'displacement/frac_loss_fell_since_prev'.
        """
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"DisplacementTracker.update: step {step} is not after the previous step "
                             f"{self.steps[-1]}")
        if self.steps and (losses is None) != (not self._losses):
            raise ValueError("DisplacementTracker.update: pass losses at every update or at none")
        preferred = _as_cpu_vector("preferred_logprobs", preferred_logprobs, self.num_examples)
        dispreferred = _as_cpu_vector("dispreferred_logprobs", dispreferred_logprobs, self.num_examples)
        prob = preferred.exp()
        scalars: dict[str, float] = {}

        if not self.steps:
            self._max_prob_so_far = prob.clone()
            self._min_prob = prob.clone()
            fell_since_prev = torch.zeros(self.num_examples, dtype=torch.bool)
        else:
            fell_since_prev = preferred < self._preferred[-1]
            self._num_fell_since_prev += fell_since_prev.long()
            self._max_prob_so_far = torch.maximum(self._max_prob_so_far, prob)
            self._largest_decrease = torch.maximum(self._largest_decrease, self._max_prob_so_far - prob)
            self._min_prob = torch.minimum(self._min_prob, prob)

        if losses is not None:
            loss = _as_cpu_vector("losses", losses, self.num_examples)
            if self._losses:
                previous = self._losses[-1]
                self._loss_ever_increased |= loss > previous + self.loss_increase_tolerance
                if loss.mean() > previous.mean() + self.loss_increase_tolerance:
                    self._mean_loss_ever_increased = True
                scalars[mk.DISPLACEMENT_FRAC_LOSS_FELL_SINCE_PREV] = float((loss < previous).double().mean())
            else:
                scalars[mk.DISPLACEMENT_FRAC_LOSS_FELL_SINCE_PREV] = 0.0
            scalars[mk.DISPLACEMENT_LOSS_MEAN] = float(loss.mean())
            self._losses.append(loss)

        self.steps.append(int(step))
        self._preferred.append(preferred)
        self._dispreferred.append(dispreferred)

        preferred_change = preferred - self._preferred[0]
        dispreferred_change = dispreferred - self._dispreferred[0]
        scalars.update({
            mk.DISPLACEMENT_PREFERRED_LOGPROB_MEAN: float(preferred.mean()),
            mk.DISPLACEMENT_DISPREFERRED_LOGPROB_MEAN: float(dispreferred.mean()),
            mk.DISPLACEMENT_PREFERRED_PROB_MEAN: float(prob.mean()),
            mk.DISPLACEMENT_DISPREFERRED_PROB_MEAN: float(dispreferred.exp().mean()),
            mk.DISPLACEMENT_PREFERRED_CHANGE_MEAN: float(preferred_change.mean()),
            mk.DISPLACEMENT_DISPREFERRED_CHANGE_MEAN: float(dispreferred_change.mean()),
            mk.DISPLACEMENT_FRAC_FELL_SINCE_INIT: float((preferred_change < 0).double().mean()),
            mk.DISPLACEMENT_FRAC_FELL_SINCE_PREV: float(fell_since_prev.double().mean()),
            mk.DISPLACEMENT_LARGEST_DECREASE_MEAN: float(self._largest_decrease.mean()),
        })
        return scalars

    def history(self) -> dict[str, Tensor]:
        """Full trajectories: 'steps' (T,), 'preferred_logprobs' and 'dispreferred_logprobs' (T, N), and
        'losses' (T, N) if losses were passed."""
        self._require_updates("history")
        out = {
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "preferred_logprobs": torch.stack(self._preferred),
            "dispreferred_logprobs": torch.stack(self._dispreferred),
        }
        if self._losses:
            out["losses"] = torch.stack(self._losses)
        return out

    def per_example(self) -> dict[str, Tensor]:
        """(N,) tensors per example: initial/min/final preferred prob, largest decrease, log-prob changes, ...

        Keys: example_ids, initial_preferred_prob, min_preferred_prob, final_preferred_prob,
        largest_preferred_prob_decrease, initial_/final_dispreferred_prob, initial_/final_preferred_logprob,
        initial_/final_dispreferred_logprob, preferred_logprob_change, dispreferred_logprob_change,
        preferred_prob_fell (bool: final < initial), num_steps_preferred_fell_since_prev (int), and with
        losses: initial_loss, final_loss, loss_ever_increased (bool).
        """
        self._require_updates("per_example")
        first_pref, last_pref = self._preferred[0], self._preferred[-1]
        first_dis, last_dis = self._dispreferred[0], self._dispreferred[-1]
        out = {
            "example_ids": torch.tensor(self.example_ids, dtype=torch.int64),
            "initial_preferred_prob": first_pref.exp(),
            "min_preferred_prob": self._min_prob.clone(),
            "final_preferred_prob": last_pref.exp(),
            "largest_preferred_prob_decrease": self._largest_decrease.clone(),
            "initial_dispreferred_prob": first_dis.exp(),
            "final_dispreferred_prob": last_dis.exp(),
            "initial_preferred_logprob": first_pref.clone(),
            "final_preferred_logprob": last_pref.clone(),
            "initial_dispreferred_logprob": first_dis.clone(),
            "final_dispreferred_logprob": last_dis.clone(),
            "preferred_logprob_change": last_pref - first_pref,
            "dispreferred_logprob_change": last_dis - first_dis,
            "preferred_prob_fell": last_pref < first_pref,
            "num_steps_preferred_fell_since_prev": self._num_fell_since_prev.clone(),
        }
        if self._losses:
            out["initial_loss"] = self._losses[0].clone()
            out["final_loss"] = self._losses[-1].clone()
            out["loss_ever_increased"] = self._loss_ever_increased.clone()
        return out

    def summary(self) -> dict[str, float | int]:
        """JSON-able aggregates over examples for summary.json.

        Keys: num_examples, num_updates, first_step, last_step, `<metric>_mean` and `<metric>_std` (population
        std) for every float per-example metric, num_examples_preferred_prob_fell,
        frac_examples_preferred_prob_fell, and with losses: frac_examples_loss_ever_increased and
        mean_loss_ever_increased (the mean loss over examples grew between some two consecutive updates).
        """
        per_example = self.per_example()
        out: dict[str, float | int] = {
            "num_examples": self.num_examples,
            "num_updates": self.num_updates,
            "first_step": self.steps[0],
            "last_step": self.steps[-1],
        }
        for name, values in per_example.items():
            if values.dtype == torch.float64:
                out[f"{name}_mean"] = float(values.mean())
                out[f"{name}_std"] = float(values.std(correction=0))
        fell = per_example["preferred_prob_fell"]
        out["num_examples_preferred_prob_fell"] = int(fell.sum())
        out["frac_examples_preferred_prob_fell"] = float(fell.double().mean())
        if self._losses:
            out["frac_examples_loss_ever_increased"] = float(self._loss_ever_increased.double().mean())
            out["mean_loss_ever_increased"] = bool(self._mean_loss_ever_increased)
        return out

    def save_tensors(self, path: Path, extra: dict[str, Tensor] | None = None) -> None:
        """Write history and per-example tensors (plus `extra`) to a safetensors file at `path`.

        Keys: the `history()` keys, and `per_example/<name>` for each `per_example()` entry (bool tensors are
        stored as bool). Read back with `safetensors.torch.load_file(path)`.
        """
        tensors = dict(self.history())
        tensors.update({f"per_example/{name}": value for name, value in self.per_example().items()})
        if extra:
            clashes = sorted(set(extra) & set(tensors))
            if clashes:
                raise ValueError(f"DisplacementTracker.save_tensors: extra keys clash with tracker keys {clashes}")
            tensors.update(extra)
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_via(Path(path), lambda tmp: save_file(contiguous, tmp))  # safetensors alone makes it 0600

    def _require_updates(self, what: str) -> None:
        if not self.steps:
            raise RuntimeError(f"DisplacementTracker.{what}: no update has been recorded yet")
