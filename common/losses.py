"""The one preference-loss registry, shared by the persona (single-token) and dataset-level (sequence) trainers.

Every loss is a small public pure function over *summed* per-example log-probs (`PreferenceLogps`) and returns
per-example losses plus detached implicit rewards (`LossOutput`). A trainer selects one with the plan field
`objective` and calls `compute_preference_loss(config, logps)`, which also adds `sft_coeff * NLL(y+)`.

Notation (per example, shape (B,)): pi+ = log pi(y+|x), pi- = log pi(y-|x) summed over response tokens (nats);
ref+/ref- the same under the reference (initial) model; |y+|, |y-| response lengths in tokens; beta = `kl_coeff`;
h = (pi+ - ref+) - (pi- - ref-) the DPO log-ratio margin. Each loss's formula, source and departures are in its
docstring; the table with hyper-parameters and defaults is docs/losses.md. Objectives: cross_entropy, dpo, ipo,
cdpo, robust_dpo, hinge, simpo, dpop, rdpo, rrhf, orpo (keys of `LOSSES`).
Use fp32 log-probs: the functions compute in the dtype they receive.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config import RunConfig


@dataclass
class PreferenceLogps:
    """Summed response log-probs of a batch of preference pairs.

    Attributes:
        policy_chosen: (B,) log pi(y+|x) summed over the response tokens, graph-connected to the policy.
        policy_rejected: (B,) log pi(y-|x), same.
        reference_chosen: (B,) the same under the reference (initial) model, precomputed; None if not needed.
        reference_rejected: (B,) same for y-; None if not needed.
        chosen_lengths: (B,) number of response tokens of y+ (all ones for single-token experiments).
        rejected_lengths: (B,) same for y-.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    reference_chosen: Tensor | None
    reference_rejected: Tensor | None
    chosen_lengths: Tensor
    rejected_lengths: Tensor


@dataclass
class LossOutput:
    """Per-example loss and detached implicit rewards.

    Attributes:
        losses: (B,) per-example loss, including `sft_coeff * NLL(y+)` when set through
            `compute_preference_loss`. Average it over the batch for backward.
        chosen_rewards: (B,) detached; beta (pi+ - ref+) for reference-based losses, else the loss's own score.
        rejected_rewards: (B,) detached, same for y-.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


@dataclass(kw_only=True)
class LossConfig(RunConfig):
    """Loss fields shared by every preference-training family. A family config composes it with the other
    concepts' field groups as bases (e.g. `PersonaConfig(LossConfig, GradEntanglementConfig)`); plans stay flat.

    Parameters of the loss (docs/losses.md):
        objective (`str`, defaults to `"dpo"`): Loss name, a key of `LOSSES` (reference: `loss_type`).
        kl_coeff (`float`, defaults to `0.1`): beta, the preference strength / inverse temperature (> 0). For IPO
            it plays tau (target margin 1/(2 tau)); for hinge the margin is 1/beta; for SimPO it is SimPO's beta
            (paper: 2.0-2.5). Name kept for compatibility with existing plans (TRL: `beta`).
        sft_coeff (`float`, defaults to `0.0`): Weight s >= 0 of an added SFT term s * (-pi+), the NLL of the
            preferred response *summed* over its tokens (same units as the `cross_entropy` objective). Any
            objective; 0 = off.
        label_smoothing (`float` or `None`, defaults to `None`): eps in [0, 0.5), the assumed probability that a
            preference label is flipped (`cdpo`, `robust_dpo`, which require it; typical 0.1).
        ipo_length_normalized (`bool`, defaults to `False`): IPO on per-token log-ratios
            h = (pi+ - ref+)/|y+| - (pi- - ref-)/|y-| (as TRL) instead of the paper's summed ones (identical for
            single tokens).
        simpo_gamma (`float` or `None`, defaults to `None`): SimPO target reward margin gamma (paper: 0.5-1.6);
            required by `simpo`.
        dpop_lambda (`float` or `None`, defaults to `None`): DPO-Positive penalty weight lambda >= 0 (paper: 50);
            required by `dpop`.
        rdpo_alpha (`float` or `None`, defaults to `None`): R-DPO length coefficient alpha; required by `rdpo`.
        orpo_lambda (`float` or `None`, defaults to `None`): ORPO odds-ratio weight lambda >= 0 (paper: 0.1);
            required by `orpo`.
    """

    objective: str = "dpo"
    kl_coeff: float = 0.1
    sft_coeff: float = 0.0
    label_smoothing: float | None = None
    ipo_length_normalized: bool = False
    simpo_gamma: float | None = None
    dpop_lambda: float | None = None
    rdpo_alpha: float | None = None
    orpo_lambda: float | None = None

    def validate(self) -> list[str]:
        """Base checks plus: objective known, its hyper-parameters set and in range, sft_coeff >= 0."""
        return super().validate() + loss_config_problems(self)


# ----------------------------------------------------------------------------------------------- helpers

def _log_ratios(logps: PreferenceLogps, objective: str, length_normalized: bool = False) -> tuple[Tensor, Tensor]:
    """(pi+ - ref+, pi- - ref-), each (B,), optionally divided by the response lengths."""
    if logps.reference_chosen is None or logps.reference_rejected is None:
        raise ValueError(f"losses: objective {objective!r} needs reference log-probs (PreferenceLogps."
                         f"reference_chosen/reference_rejected), got None; precompute them with the initial model")
    chosen = logps.policy_chosen - logps.reference_chosen
    rejected = logps.policy_rejected - logps.reference_rejected
    if length_normalized:
        chosen, rejected = chosen / _lengths(logps.chosen_lengths), rejected / _lengths(logps.rejected_lengths)
    return chosen, rejected


def _lengths(lengths: Tensor) -> Tensor:
    """Response lengths as floats, checked to be >= 1."""
    if bool((lengths < 1).any()):
        raise ValueError(f"losses: response lengths must be >= 1 token, got {lengths.tolist()}")
    return lengths.to(torch.float32)


def _reference_rewards(logps: PreferenceLogps, beta: float) -> tuple[Tensor, Tensor]:
    """Detached DPO implicit rewards beta (pi+ - ref+), beta (pi- - ref-), summed over tokens."""
    chosen, rejected = _log_ratios(logps, "reward")
    return (beta * chosen).detach(), (beta * rejected).detach()


def _sigmoid_loss(logps: PreferenceLogps, beta: float, margin: Tensor) -> LossOutput:
    """-log sigmoid(margin) with DPO rewards (the shape shared by dpo, dpop and rdpo)."""
    return LossOutput(-F.logsigmoid(margin), *_reference_rewards(logps, beta))


# ------------------------------------------------------------------------------------------------ losses

def cross_entropy_loss(logps: PreferenceLogps) -> LossOutput:
    """SFT on the preferred response: loss = -pi+ (summed NLL, nats). Rewards: pi+ and pi- themselves."""
    return LossOutput(-logps.policy_chosen, logps.policy_chosen.detach(), logps.policy_rejected.detach())


def dpo_loss(logps: PreferenceLogps, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7): loss = -log sigmoid(beta h), h the log-ratio margin.

    Equals ln 2 = 0.693147 at h = 0 (policy = reference), and log(1 + e^-1) = 0.313262 at beta 0.1, h = 10.
    """
    chosen, rejected = _log_ratios(logps, "dpo")
    return _sigmoid_loss(logps, beta, beta * (chosen - rejected))


def ipo_loss(logps: PreferenceLogps, beta: float, length_normalized: bool) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17): loss = (h - 1/(2 tau))^2 with tau = beta.

    h is the summed log-ratio margin as in the paper, or, with `length_normalized`, the per-token one
    (pi+ - ref+)/|y+| - (pi- - ref-)/|y-| that TRL uses (a deliberate option, not the paper's form).
    With beta 0.1 the target margin is 5: the loss is 25 at h = 0 and 0 at h = 5.
    """
    chosen, rejected = _log_ratios(logps, "ipo", length_normalized)
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(losses, *_reference_rewards(logps, beta))


def cdpo_loss(logps: PreferenceLogps, beta: float, label_smoothing: float) -> LossOutput:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): DPO with label smoothing eps,

    loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h). Its minimum is at a finite margin.
    """
    chosen, rejected = _log_ratios(logps, "cdpo")
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(losses, *_reference_rewards(logps, beta))


def robust_dpo_loss(logps: PreferenceLogps, beta: float, label_smoothing: float) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409, the rDPO loss of Sec. 3), flip rate eps < 1/2:

    loss = [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps), an unbiased estimate of
    the clean-label DPO loss. It can be negative, and it decreases in h everywhere.
    """
    chosen, rejected = _log_ratios(logps, "robust_dpo")
    logits = beta * (chosen - rejected)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)
    return LossOutput(losses, *_reference_rewards(logps, beta))


def hinge_loss(logps: PreferenceLogps, beta: float) -> LossOutput:
    """SLiC hinge (Zhao et al. 2023, arXiv:2305.10425, Eq. 1) on the reference log-ratio margin, as in the DPO
    paper and TRL: loss = max(0, 1 - beta h) = beta max(0, delta - h) with margin delta = 1/beta.

    Departures: SLiC uses pi+ - pi- without a reference; its regulariser -lambda log pi(y_ref|x) is available
    as `sft_coeff` when y_ref is the preferred response.
    """
    chosen, rejected = _log_ratios(logps, "hinge")
    losses = torch.relu(1 - beta * (chosen - rejected))
    return LossOutput(losses, *_reference_rewards(logps, beta))


def simpo_loss(logps: PreferenceLogps, beta: float, gamma: float) -> LossOutput:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6), reference-free and length-normalised:

    loss = -log sigmoid(beta pi+/|y+| - beta pi-/|y-| - gamma). Rewards: beta pi/|y| (the paper's reward, Eq. 4).
    """
    chosen = beta * logps.policy_chosen / _lengths(logps.chosen_lengths)
    rejected = beta * logps.policy_rejected / _lengths(logps.rejected_lengths)
    return LossOutput(-F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach())


def dpop_loss(logps: PreferenceLogps, beta: float, dpop_lambda: float) -> LossOutput:
    """DPO-Positive (Pal et al. 2024, "Smaug", arXiv:2402.13228, Eq. 3):

    loss = -log sigmoid(beta (h - lambda max(0, ref+ - pi+))): a penalty once the preferred log-prob falls
    below its reference value, aimed directly at likelihood displacement. Equals DPO while pi+ > ref+.

    At the kink pi+ = ref+ (every example at step 0, where the policy is the reference) the penalty's
    subgradient 1 is used, as TRL's clamp form `clamp(ref+ - pi+, min=0)` does (torch's relu takes 0 there and
    would drop the penalty): with pi = ref, beta 0.1, lambda 2, dL/dpi+ = -beta sigmoid(0) (1 + lambda) = -0.15
    (relu: -0.05).
    """
    chosen, rejected = _log_ratios(logps, "dpop")
    penalty = dpop_lambda * torch.clamp(-chosen, min=0)
    return _sigmoid_loss(logps, beta, beta * (chosen - rejected - penalty))


def rdpo_loss(logps: PreferenceLogps, beta: float, alpha: float) -> LossOutput:
    """R-DPO (Park et al. 2024, "Disentangling length from quality in DPO", arXiv:2403.19159, the R-DPO loss):

    loss = -log sigmoid(beta h + alpha (|y+| - |y-|)). The length term comes from the reward r - alpha |y| and
    credits part of the preference to length, so a longer y+ needs a smaller log-ratio margin.
    """
    chosen, rejected = _log_ratios(logps, "rdpo")
    length_gap = _lengths(logps.chosen_lengths) - _lengths(logps.rejected_lengths)
    return _sigmoid_loss(logps, beta, beta * (chosen - rejected) + alpha * length_gap)


def rrhf_loss(logps: PreferenceLogps) -> LossOutput:
    """RRHF for one pair (Yuan et al. 2023, arXiv:2304.05302, Eqs. 2-4): L = L_rank + L_ft with

    L_rank = max(0, p- - p+), p = pi/|y| the length-normalised log-prob (Eq. 1), and L_ft = -pi+ (summed NLL
    of the best response, Eq. 3, weight 1 as in Eq. 4). Reference-free. Rewards: p+ and p-.
    """
    chosen = logps.policy_chosen / _lengths(logps.chosen_lengths)
    rejected = logps.policy_rejected / _lengths(logps.rejected_lengths)
    losses = torch.relu(rejected - chosen) - logps.policy_chosen
    return LossOutput(losses, chosen.detach(), rejected.detach())


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, computed in log space: log1p(-exp(x)) for x < -ln 2, log(-expm1(x)) above
    (each branch is accurate where the other cancels). Example: x = ln(1/2) -> ln(1/2); x = -1e-7 -> ln(1e-7)
    to 1e-7 relative. Each branch sees its input clamped to its own side of -ln 2, so the branch not taken
    cannot produce inf/NaN gradients through torch.where."""
    split = -math.log(2.0)
    far_from_zero = torch.log1p(-torch.exp(x.clamp(max=split)))
    near_zero = torch.log(-torch.expm1(x.clamp(min=split)))
    return torch.where(x < split, far_from_zero, near_zero)


def log_odds(mean_logprob: Tensor) -> Tensor:
    """log odds(y|x) = log P - log(1 - P) with P = exp(mean token log-prob) (ORPO, Eq. 4), elementwise.

    log(1 - P) is `log1mexp` (log space), so the odds ratio keeps its gradient as P -> 1 (d log odds / dx =
    1 / (1 - P)). Only P = 1 exactly (infinite odds) is moved to the largest float below 0 (x <= -tiny, e.g.
    -1.2e-38 in float32), where the value is large but finite and the gradient is still defined.
    """
    mean_logprob = mean_logprob.clamp(max=-torch.finfo(mean_logprob.dtype).tiny)
    return mean_logprob - log1mexp(mean_logprob)


def orpo_loss(logps: PreferenceLogps, orpo_lambda: float) -> LossOutput:
    """ORPO (Hong et al. 2024, arXiv:2403.07691, Eqs. 6-7), reference-free:

    loss = -pi+/|y+| - lambda log sigmoid(log odds(y+) - log odds(y-)), odds from the per-token mean log-prob.
    The SFT term is the paper's token-averaged NLL (`sft_coeff` adds a *summed* NLL on top). Rewards: log odds.
    """
    chosen_mean = logps.policy_chosen / _lengths(logps.chosen_lengths)
    chosen_odds = log_odds(chosen_mean)
    rejected_odds = log_odds(logps.policy_rejected / _lengths(logps.rejected_lengths))
    losses = -chosen_mean - orpo_lambda * F.logsigmoid(chosen_odds - rejected_odds)
    return LossOutput(losses, chosen_odds.detach(), rejected_odds.detach())


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class LossSpec:
    """A registered loss: `fn(logps, config)` maps config fields to the loss function's paper symbols.

    Attributes:
        name: The `objective` value that selects it.
        fn: (PreferenceLogps, LossConfig) -> LossOutput, without the sft_coeff term.
        needs_reference: Whether reference log-probs must be computed.
        required_hyperparameters: LossConfig fields the loss reads (must not be None; range-checked).
        doc: One line: formula and source.
    """

    name: str
    fn: Callable[[PreferenceLogps, LossConfig], LossOutput]
    needs_reference: bool
    required_hyperparameters: tuple[str, ...]
    doc: str


_SPECS = [
    LossSpec("cross_entropy", lambda lp, c: cross_entropy_loss(lp), False, (), "-pi+ (SFT on preferred)"),
    LossSpec("dpo", lambda lp, c: dpo_loss(lp, c.kl_coeff), True, ("kl_coeff",),
             "-log sigmoid(beta h); Rafailov et al. 2023 Eq. 7"),
    LossSpec("ipo", lambda lp, c: ipo_loss(lp, c.kl_coeff, c.ipo_length_normalized), True, ("kl_coeff",),
             "(h - 1/(2 beta))^2; Azar et al. 2023 Eq. 17"),
    LossSpec("cdpo", lambda lp, c: cdpo_loss(lp, c.kl_coeff, c.label_smoothing), True,
             ("kl_coeff", "label_smoothing"), "DPO with label smoothing eps; Mitchell 2023"),
    LossSpec("robust_dpo", lambda lp, c: robust_dpo_loss(lp, c.kl_coeff, c.label_smoothing), True,
             ("kl_coeff", "label_smoothing"), "unbiased noisy-label DPO; Chowdhury et al. 2024"),
    LossSpec("hinge", lambda lp, c: hinge_loss(lp, c.kl_coeff), True, ("kl_coeff",),
             "max(0, 1 - beta h); SLiC-HF, Zhao et al. 2023"),
    LossSpec("simpo", lambda lp, c: simpo_loss(lp, c.kl_coeff, c.simpo_gamma), False, ("kl_coeff", "simpo_gamma"),
             "-log sigmoid(beta pi+/|y+| - beta pi-/|y-| - gamma); Meng et al. 2024 Eq. 6"),
    LossSpec("dpop", lambda lp, c: dpop_loss(lp, c.kl_coeff, c.dpop_lambda), True, ("kl_coeff", "dpop_lambda"),
             "-log sigmoid(beta (h - lambda max(0, ref+ - pi+))); Pal et al. 2024 Eq. 3"),
    LossSpec("rdpo", lambda lp, c: rdpo_loss(lp, c.kl_coeff, c.rdpo_alpha), True, ("kl_coeff", "rdpo_alpha"),
             "-log sigmoid(beta h + alpha (|y+| - |y-|)); Park et al. 2024"),
    LossSpec("rrhf", lambda lp, c: rrhf_loss(lp), False, (), "max(0, pi-/|y-| - pi+/|y+|) - pi+; Yuan et al. 2023"),
    LossSpec("orpo", lambda lp, c: orpo_loss(lp, c.orpo_lambda), False, ("orpo_lambda",),
             "-pi+/|y+| - lambda log sigmoid(log odds+ - log odds-); Hong et al. 2024"),
]
LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in _SPECS}
assert len(LOSSES) == len(_SPECS), "losses: duplicate objective name in _SPECS"

# Valid range of each hyper-parameter when its objective uses it: (check, description).
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "kl_coeff": (lambda v: v > 0, "> 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "simpo_gamma": (math.isfinite, "finite"),
    "dpop_lambda": (lambda v: v >= 0, ">= 0"),
    "rdpo_alpha": (math.isfinite, "finite"),
    "orpo_lambda": (lambda v: v >= 0, ">= 0"),
}


def get_loss_spec(objective: str) -> LossSpec:
    """The registered `LossSpec` of `objective`; ValueError listing valid names (and close matches) if unknown."""
    if objective not in LOSSES:
        close = difflib.get_close_matches(objective, LOSSES, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"objective: unknown loss {objective!r}.{hint} Valid: {', '.join(LOSSES)}")
    return LOSSES[objective]


def loss_needs_reference(objective: str) -> bool:
    """Whether `objective` needs reference log-probs (ValueError if the name is unknown)."""
    return get_loss_spec(objective).needs_reference


def loss_config_problems(config: LossConfig) -> list[str]:
    """Problems with the loss fields of `config` (empty list if valid); used by `LossConfig.validate`."""
    problems = []
    if not (config.sft_coeff >= 0 and math.isfinite(config.sft_coeff)):
        problems.append(f"sft_coeff must be a finite number >= 0, got {config.sft_coeff}")
    try:
        spec = get_loss_spec(config.objective)
    except ValueError as error:
        return problems + [str(error)]
    for field in spec.required_hyperparameters:
        value = getattr(config, field)
        check, allowed = _RANGES[field]
        if value is None:
            problems.append(f"objective {config.objective!r} requires {field} ({allowed}), got None; "
                            f"set it in the plan (see docs/losses.md)")
        elif not check(value):
            problems.append(f"{field} must be {allowed} for objective {config.objective!r}, got {value}")
    return problems


def compute_preference_loss(config: LossConfig, logps: PreferenceLogps) -> LossOutput:
    """Loss `config.objective` on `logps`, plus `config.sft_coeff * (-pi+)` (summed NLL of y+) if nonzero.

    Args:
        config: A validated LossConfig (or subclass).
        logps: Per-example summed log-probs; reference ones required iff `loss_needs_reference(objective)`.

    Returns:
        LossOutput with (B,) losses (mean them for backward) and detached (B,) rewards.
    """
    spec = get_loss_spec(config.objective)
    batch = logps.policy_chosen.shape
    for name in ("policy_rejected", "reference_chosen", "reference_rejected", "chosen_lengths", "rejected_lengths"):
        tensor = getattr(logps, name)
        if tensor is not None and tensor.shape != batch:
            raise ValueError(f"PreferenceLogps.{name} has shape {tuple(tensor.shape)}, expected {tuple(batch)} "
                             f"like policy_chosen")
    output = spec.fn(logps, config)
    if config.sft_coeff:
        output.losses = output.losses - config.sft_coeff * logps.policy_chosen
    return output
