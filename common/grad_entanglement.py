"""Gradient-entanglement diagnostics for preference training (any experiment family, off by default).

Gradient entanglement (Yuan et al. 2024, "A common pitfall of margin-based language model alignment",
arXiv:2410.13828): margin-based losses move log pi(y+|x) and log pi(y-|x) together through the inner product
of their gradients g+ = grad_theta log pi(y+|x) and g- = grad_theta log pi(y-|x).

First-order condition (derivation). Let the loss depend on theta only through the margin m = lp+ - lp-
(lp = the log-probs entering the margin) with dL/dm = -c, c > 0 (true for dpo, ipo below its target, cdpo below
its optimum, robust_dpo, hinge while active, simpo, dpop, rdpo). Then grad L = -c (g+ - g-), and one plain
gradient-descent step theta' = theta - eta grad L = theta + eta c (g+ - g-) changes the log-probs by

    lp+' - lp+ = eta c <g+, g+ - g-> + O(eta^2) = eta c (||g+||^2 - <g+, g->)
    lp-' - lp- = eta c <g-, g+ - g-> + O(eta^2) = eta c (<g+, g-> - ||g-||^2)

so, to first order, the preferred log-prob falls (likelihood displacement) iff <g+, g-> > ||g+||^2, and both
fall iff ||g+||^2 < <g+, g-> < ||g-||^2 (only possible when ||g+|| < ||g-||). We use strict inequalities: on
the boundary the change is second order, and zero gradients then predict no decrease.

Caveats, which is why `score_predictions` measures the prediction against the observed change:
  * Optimiser: RMSprop/Adam precondition the step (theta' = theta + eta c D (g+ - g-)), batches add the other
    examples' gradients; the condition is exact only for SGD on this one example.
  * Parameter subset: only the selected parameters' gradients enter (the others move too).
  * Length-normalised losses (simpo, rrhf): pass the per-token log-probs lp = pi/|y| that enter the margin; the
    sign of the change is the same for summed and per-token log-probs. An sft_coeff term s adds s g+ to the step
    (preferred falls iff <g+, g-> > (1 + s/c) ||g+||^2), which the condition ignores; cross_entropy alone never
    predicts a decrease.

Config fields (`GradEntanglementConfig`, a base of every preference family's config beside
`common.losses.LossConfig`): grad_entanglement_interval, grad_entanglement_max_examples, grad_entanglement_params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from common.config import RunConfig
from common.metric_keys import GRAD_ENTANGLEMENT_PREFIX

PARAMETER_SUBSETS = ("all", "unembedding", "last_layer", "lora")
PER_EXAMPLE_KEYS = ("inner_product", "norm_chosen", "norm_rejected", "cosine", "ratio",
                    "chosen_decrease_predicted", "both_decrease_predicted")


@dataclass(kw_only=True)
class GradEntanglementConfig(RunConfig):
    """Gradient-entanglement fields (a base of every preference family's config, beside `LossConfig`).

    Parameters of the gradient-entanglement diagnostics (Yuan et al. 2024, arXiv:2410.13828):
        grad_entanglement_interval (`int` or `None`, defaults to `None`): Compute the diagnostics every this many
            optimiser steps (>= 1; step 0 included); `None` = off (no cost).
        grad_entanglement_max_examples (`int`, defaults to `4`): Use the first this many examples of the tracked
            set (>= 1); each costs two extra backward passes.
        grad_entanglement_params (`str`, defaults to `"unembedding"`): Parameter subset of g+ and g-: `all`
            (trainable), `unembedding` (output embedding matrix; tied to the input embedding in GPT-2),
            `last_layer` (last transformer block) or `lora` (LoRA adapters).
    """

    grad_entanglement_interval: int | None = None
    grad_entanglement_max_examples: int = 4
    grad_entanglement_params: str = "unembedding"

    def validate(self) -> list[str]:
        """Base checks plus the ranges of the three fields."""
        problems = super().validate()
        if self.grad_entanglement_interval is not None and self.grad_entanglement_interval < 1:
            problems.append(f"grad_entanglement_interval must be >= 1 or None (off), "
                            f"got {self.grad_entanglement_interval}")
        if self.grad_entanglement_max_examples < 1:
            problems.append(f"grad_entanglement_max_examples must be >= 1, got {self.grad_entanglement_max_examples}")
        if self.grad_entanglement_params not in PARAMETER_SUBSETS:
            problems.append(f"grad_entanglement_params must be one of {list(PARAMETER_SUBSETS)}, "
                            f"got {self.grad_entanglement_params!r}")
        return problems


def is_due(interval: int | None, step: int) -> bool:
    """Whether the diagnostics run at optimiser step `step` (0-based): interval set and step % interval == 0."""
    return interval is not None and step % interval == 0


# ---------------------------------------------------------------------------------------- parameter subsets

def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList of same-class modules holding the most parameters."""
    candidates = [module for module in model.modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1]
    if not candidates:
        raise ValueError(f"grad_entanglement_params='last_layer': found no stack of transformer blocks "
                         f"(nn.ModuleList) in {type(model).__name__}; use 'unembedding' or 'all'")
    return max(candidates, key=lambda layers: sum(p.numel() for p in layers.parameters()))


def select_parameters(model: nn.Module, subset: str) -> list[nn.Parameter]:
    """The trainable parameters of `model` in `subset` (one of PARAMETER_SUBSETS).

    'all': every parameter with requires_grad. 'unembedding': the weight of `model.get_output_embeddings()`
    (with tied embeddings it is also the input embedding). 'last_layer': the last transformer block (not the
    final norm nor the unembedding). 'lora': parameters whose name contains 'lora_'.

    Raises:
        ValueError: unknown subset, or no trainable parameter in it (e.g. 'unembedding' of a LoRA model).
    """
    if subset == "all":
        params = list(model.parameters())
    elif subset == "unembedding":
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if output_embeddings is None:
            raise ValueError(f"grad_entanglement_params='unembedding': {type(model).__name__} has no output "
                             f"embeddings (get_output_embeddings() is None); use 'last_layer' or 'all'")
        params = [output_embeddings.weight]
    elif subset == "last_layer":
        params = list(_decoder_layers(model)[-1].parameters())
    elif subset == "lora":
        params = [p for name, p in model.named_parameters() if "lora_" in name]
    else:
        raise ValueError(f"grad_entanglement_params: unknown subset {subset!r}; expected one of "
                         f"{list(PARAMETER_SUBSETS)}")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError(f"grad_entanglement_params={subset!r}: no trainable parameters in this subset of "
                         f"{type(model).__name__} ({len(params)} frozen); with LoRA use 'lora' or 'all'")
    return trainable


# ------------------------------------------------------------------------------------------------ formulas

def _inner(a: Sequence[Tensor | None], b: Sequence[Tensor | None]) -> float:
    """sum_i <a_i, b_i> over parameter tensors, fp32 products summed in fp64; None = zero gradient."""
    total = 0.0
    for x, y in zip(a, b):
        if x is not None and y is not None:
            total += float(torch.sum(x.float() * y.float(), dtype=torch.float64))
    return total


def entanglement_from_gradients(grads_chosen: Sequence[Tensor | None],
                                grads_rejected: Sequence[Tensor | None]) -> dict[str, float | bool]:
    """Entanglement statistics of one example from its gradients (lists aligned over parameters).

    Returns:
        inner_product <g+, g->; norm_chosen ||g+||; norm_rejected ||g-||; cosine <g+, g->/(||g+|| ||g-||);
        ratio <g+, g->/min(||g+||^2, ||g-||^2) (NaN if a gradient is zero; cosine too);
        chosen_decrease_predicted <g+, g-> > ||g+||^2; both_decrease_predicted ||g+||^2 < <g+, g-> < ||g-||^2.
        Example: g+ = (1, 0), g- = (2, 1): inner 2, norms 1 and sqrt 5, cosine 2/sqrt 5, ratio 2, both True.
    """
    if len(grads_chosen) != len(grads_rejected):
        raise ValueError(f"entanglement_from_gradients: {len(grads_chosen)} chosen vs {len(grads_rejected)} "
                         f"rejected gradient tensors")
    inner = _inner(grads_chosen, grads_rejected)
    sq_chosen, sq_rejected = _inner(grads_chosen, grads_chosen), _inner(grads_rejected, grads_rejected)
    norm_product = math.sqrt(sq_chosen * sq_rejected)
    smaller = min(sq_chosen, sq_rejected)
    return {
        "inner_product": inner,
        "norm_chosen": math.sqrt(sq_chosen),
        "norm_rejected": math.sqrt(sq_rejected),
        "cosine": inner / norm_product if norm_product > 0 else math.nan,
        "ratio": inner / smaller if smaller > 0 else math.nan,
        "chosen_decrease_predicted": inner > sq_chosen,
        "both_decrease_predicted": sq_chosen < inner < sq_rejected,
    }


def _gradients(output: Tensor, params: Sequence[nn.Parameter], label: str) -> tuple[Tensor | None, ...]:
    """d output / d params without touching `.grad`; keeps the graph so the caller can still backward."""
    if output.numel() != 1 or not output.requires_grad:
        raise ValueError(f"gradient_entanglement: {label} must be a scalar connected to the parameters' graph, "
                         f"got shape {tuple(output.shape)}, requires_grad={output.requires_grad}")
    return torch.autograd.grad(output.reshape(()), params, retain_graph=True, allow_unused=True)


def gradient_entanglement(params: Sequence[nn.Parameter],
                          logprob_pairs: Iterable[tuple[Tensor, Tensor]]) -> list[dict[str, float | bool]]:
    """Per-example gradient-entanglement statistics.

    Args:
        params: Trainable parameters (e.g. `select_parameters(model, config.grad_entanglement_params)`).
        logprob_pairs: For each example, scalar log pi(y+|x) and log pi(y-|x) (summed, or per-token for
            length-normalised losses) still connected to the graph of `params`; they may come from one batched
            forward pass (e.g. the training step's, before its backward: the graph is retained).

    Returns:
        One dict per example: the keys of `entanglement_from_gradients` plus logp_chosen and logp_rejected (the
        values at this step, for `score_predictions`). Memory: two gradient copies of the subset at a time.
    """
    params = list(params)
    if not params or any(not p.requires_grad for p in params):
        raise ValueError("gradient_entanglement: params must be a non-empty list of parameters with "
                         "requires_grad=True (see select_parameters)")
    stats = []
    for index, (logp_chosen, logp_rejected) in enumerate(logprob_pairs):
        grads_chosen = _gradients(logp_chosen, params, f"logp_chosen of pair {index}")
        grads_rejected = _gradients(logp_rejected, params, f"logp_rejected of pair {index}")
        example = entanglement_from_gradients(grads_chosen, grads_rejected)
        example.update(logp_chosen=float(logp_chosen.detach()), logp_rejected=float(logp_rejected.detach()))
        stats.append(example)
    return stats


def score_predictions(stats: Sequence[dict], next_chosen_logps: Sequence[float],
                      next_rejected_logps: Sequence[float]) -> dict[str, float]:
    """How often the first-order predictions matched the change observed at the next measurement.

    Observed: preferred fell = next_chosen < logp_chosen; both fell = that and next_rejected < logp_rejected.

    Returns:
        chosen_decrease_accuracy and both_decrease_accuracy (fractions of examples where predicted == observed),
        chosen_decrease_observed and both_decrease_observed (fractions observed). Example: predictions
        (both) [True, False], observed [True, True] -> both_decrease_accuracy 0.5.
    """
    if not (len(stats) == len(next_chosen_logps) == len(next_rejected_logps)) or not stats:
        raise ValueError(f"score_predictions: need equally many (>= 1) stats ({len(stats)}), next chosen "
                         f"({len(next_chosen_logps)}) and next rejected ({len(next_rejected_logps)}) log-probs")
    chosen_fell = [float(after) < s["logp_chosen"] for s, after in zip(stats, next_chosen_logps)]
    both_fell = [fell and float(after) < s["logp_rejected"]
                 for s, fell, after in zip(stats, chosen_fell, next_rejected_logps)]
    count = len(stats)
    chosen_right = sum(s["chosen_decrease_predicted"] == fell for s, fell in zip(stats, chosen_fell))
    both_right = sum(s["both_decrease_predicted"] == fell for s, fell in zip(stats, both_fell))
    return {
        "chosen_decrease_accuracy": chosen_right / count,
        "both_decrease_accuracy": both_right / count,
        "chosen_decrease_observed": sum(chosen_fell) / count,
        "both_decrease_observed": sum(both_fell) / count,
    }


def summarize_entanglement(stats: Sequence[dict], prefix: str = "grad_entanglement/") -> dict[str, float]:
    """Means over examples of every per-example statistic (booleans become fractions), NaNs skipped.

    Keys: f"{prefix}{key}" for key in PER_EXAMPLE_KEYS, e.g. 'grad_entanglement/cosine'; NaN if all are NaN.
    """
    summary = {}
    for key in PER_EXAMPLE_KEYS:
        values = [float(s[key]) for s in stats if not math.isnan(float(s[key]))]
        summary[prefix + key] = sum(values) / len(values) if values else math.nan
    return summary


# ------------------------------------------------------------------------------------------ run bookkeeping

class EntanglementLog:
    """The one bookkeeping of gradient-entanglement diagnostics over a run, used by both trainers.

    A diagnosed step hands its per-example statistics (`gradient_entanglement`) to `measure`, which returns the
    scalars to log (`summarize_entanglement`) and, with `score_later`, keeps them pending; the next measurement of
    the same examples' log-probs goes to `score`, which scores the pending predictions (`score_predictions`) and
    returns their scalars under `grad_entanglement/`. `num_diagnosed` counts the diagnosed steps; the summaries
    write it under the key the caller names (`grad_entanglement/num_steps` for the persona trainer,
    `grad_entanglement/num_points` for the dataset-level one, kept as the outputs always wrote them).

    Two summaries, as the two trainers always wrote them (values and key order unchanged):
      * `summary_over_examples`: statistics pooled over every (step, example), then the means over scored steps of
        chosen_decrease_accuracy, both_decrease_accuracy and chosen_decrease_observed, then the count;
      * `summary_over_points`: the count, then per logged key the mean over steps of that step's logged means
        (NaNs skipped). With equally many examples per step and no NaN both give the same means, up to rounding.
    Example: one step with the stats of g+ = (1, 0), g- = (2, 1) (chosen decrease predicted) scored against a
    fallen preferred log-prob: chosen_decrease_predicted 1.0, chosen_decrease_accuracy 1.0, count 1.
    """

    SCORE_KEYS_OVER_EXAMPLES = ("chosen_decrease_accuracy", "both_decrease_accuracy", "chosen_decrease_observed")

    def __init__(self) -> None:
        self.steps: list[list[dict]] = []          # per-example statistics of each diagnosed step
        self.scores: list[dict[str, float]] = []   # the scored predictions, one per scored step
        self.pending: list[dict] = []              # statistics waiting for the next measurement

    @property
    def num_diagnosed(self) -> int:
        """Diagnosed steps so far (the summaries' count)."""
        return len(self.steps)

    def measure(self, stats: list[dict], score_later: bool = True) -> dict[str, float]:
        """Record one diagnosed step's per-example statistics; returns their means (`summarize_entanglement`)."""
        if not stats:
            return {}
        self.steps.append(stats)
        self.pending = list(stats) if score_later else []
        return summarize_entanglement(stats)

    def score(self, next_chosen_logps: Sequence[float], next_rejected_logps: Sequence[float]) -> dict[str, float]:
        """Score the pending predictions against log-probs measured after the update (first len(pending) values
        are the diagnosed examples'); returns `grad_entanglement/<score>` scalars, or {} if nothing is pending."""
        if not self.pending:
            return {}
        count = len(self.pending)
        scores = score_predictions(self.pending, list(next_chosen_logps)[:count], list(next_rejected_logps)[:count])
        self.scores.append(scores)
        self.pending = []
        return {GRAD_ENTANGLEMENT_PREFIX + key: value for key, value in scores.items()}

    def summary_over_examples(self, count_key: str) -> dict[str, float]:
        """Pooled means over all diagnosed (step, example) pairs, mean scores over scored steps, the count ({} if
        nothing was diagnosed)."""
        if not self.steps:
            return {}
        out = summarize_entanglement([s for step in self.steps for s in step])
        if self.scores:
            for key in self.SCORE_KEYS_OVER_EXAMPLES:
                out[GRAD_ENTANGLEMENT_PREFIX + key] = sum(s[key] for s in self.scores) / len(self.scores)
        out[count_key] = self.num_diagnosed
        return out

    def summary_over_points(self, count_key: str) -> dict[str, float]:
        """The count, then per logged key the mean over scored steps of the step's logged value, NaNs skipped
        ({} if nothing was scored; NaN where every value is NaN)."""
        points = [{**summarize_entanglement(stats), **{GRAD_ENTANGLEMENT_PREFIX + k: v for k, v in scores.items()}}
                  for stats, scores in zip(self.steps, self.scores)]
        if not points:
            return {}
        out: dict[str, float] = {count_key: self.num_diagnosed}
        for key in points[0]:
            values = [p[key] for p in points if not math.isnan(p[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        return out
