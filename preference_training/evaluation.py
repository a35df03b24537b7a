"""Evaluation statistics of the dataset-level trainer: log-prob changes of a split vs the initial model.

For a split (`train` = the training subset, `test` = the held-out pairs) with per-example summed log-probs
pi+_i = log pi(y+_i|x_i), pi-_i under the current model and ref+_i, ref-_i under the initial (reference) model:

    preferred change   d+_i = pi+_i - ref+_i        dispreferred change   d-_i = pi-_i - ref-_i      (nats)

Names written to `eval_metrics.jsonl` (and `metrics.jsonl`), `<split>` = train | test:
    eval_metrics/<split>/preferred_logprobs_change_{mean,std,min,q10,q25,median,q75,q90,max}
    eval_metrics/<split>/dispreferred_logprobs_change_{same}
    eval_metrics/<split>/frac_preferred_logprobs_decreased     fraction with d+_i < 0
    eval_metrics/<split>/frac_dispreferred_logprobs_decreased  fraction with d-_i < 0
    eval_metrics/<split>/preferred_logprobs_mean, dispreferred_logprobs_mean   mean pi+_i, pi-_i
    eval_metrics/<split>/loss                                  mean training objective on the split
    eval_metrics/<split>/rewards_accuracy                      fraction with chosen reward > rejected reward
std is the population std (divide by N); quantiles interpolate linearly (`torch.quantile`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.losses import LossConfig, PreferenceLogps, compute_preference_loss
from common.metric_keys import EVAL_METRICS_PREFIX

QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.5, "q75": 0.75, "q90": 0.90}


def distribution_statistics(values: Tensor) -> dict[str, float]:
    """mean, std (population), min, q10, q25, median, q75, q90, max of a (N,) tensor (computed in float64).

    Example: [1, 2, 3, 4] -> mean 2.5, std sqrt(1.25) = 1.118034, min 1, median 2.5, q25 1.75, max 4.
    """
    values = values.detach().double().reshape(-1).cpu()
    if values.numel() == 0:
        raise ValueError("distribution_statistics: got an empty tensor (a split without examples)")
    stats = {"mean": float(values.mean()), "std": float(values.std(unbiased=False)), "min": float(values.min())}
    probabilities = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)
    stats.update(zip(QUANTILES, torch.quantile(values, probabilities).tolist()))
    stats["max"] = float(values.max())
    return stats


def split_eval_metrics(split: str, policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                       reference_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                       loss_config: LossConfig) -> dict[str, float]:
    """All `eval_metrics/<split>/...` scalars of the module docstring for one split.

    Args:
        split: "train" or "test" (any lowercase name).
        policy_chosen, policy_rejected: (N,) current summed log-probs (nats).
        reference_chosen, reference_rejected: (N,) the initial model's.
        chosen_lengths, rejected_lengths: (N,) response lengths in tokens (for length-normalised losses).
        loss_config: The run's loss settings (objective, kl_coeff, sft_coeff, ...).
    """
    prefix = EVAL_METRICS_PREFIX.format(split=split)
    preferred_change = policy_chosen.double() - reference_chosen.double()
    dispreferred_change = policy_rejected.double() - reference_rejected.double()
    metrics: dict[str, float] = {}
    for name, change in (("preferred", preferred_change), ("dispreferred", dispreferred_change)):
        for stat, value in distribution_statistics(change).items():
            metrics[f"{prefix}{name}_logprobs_change_{stat}"] = value
        metrics[f"{prefix}frac_{name}_logprobs_decreased"] = float((change < 0).double().mean())
    metrics[f"{prefix}preferred_logprobs_mean"] = float(policy_chosen.double().mean())
    metrics[f"{prefix}dispreferred_logprobs_mean"] = float(policy_rejected.double().mean())
    logps = PreferenceLogps(policy_chosen.float(), policy_rejected.float(), reference_chosen.float(),
                            reference_rejected.float(), chosen_lengths, rejected_lengths)
    output = compute_preference_loss(loss_config, logps)
    metrics[f"{prefix}loss"] = float(output.losses.double().mean())
    metrics[f"{prefix}rewards_accuracy"] = float((output.chosen_rewards > output.rejected_rewards).double().mean())
    return metrics
