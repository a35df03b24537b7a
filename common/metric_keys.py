"""The output contract of both trainers: the names of the metric, summary and geometry keys they write (torch-free).

Writers: the persona trainer (`persona_experiments/trainer.py`, `recording.py`) and the dataset-level trainer
(`preference_training/trainer.py`, `evaluation.py`); the tracker (`common/tracker.py`) and the gradient-
entanglement diagnostics (`common/grad_entanglement.py`) for both. Readers: the printers and
`common/loss_comparison.py`. Step numbering (both trainers): a record logged at step s holds values measured on the
weights after s optimizer updates (s = 0: the initial weights). Log-probs are summed over response tokens, in nats.
"""

from __future__ import annotations

from typing import Sequence

# --- metrics.jsonl: the training record of one optimizer step (TRL-compatible names) -----------------------------
LOSS = "loss"                              # mean training objective over the step's batch (accumulation undone)
REWARDS_CHOSEN = "rewards/chosen"          # mean implicit reward of y+ (beta * (log pi - log pi_ref) for DPO)
REWARDS_REJECTED = "rewards/rejected"      # mean implicit reward of y-
REWARDS_MARGINS = "rewards/margins"        # mean of rewards/chosen - rewards/rejected per pair
REWARDS_ACCURACIES = "rewards/accuracies"  # fraction of pairs with margin > 0
LOGPS_CHOSEN = "logps/chosen"              # mean log pi(y+|x) over the batch
LOGPS_REJECTED = "logps/rejected"          # mean log pi(y-|x) over the batch
LR = "lr"                                  # learning rate of this update (param_groups[0], before the scheduler step)
EPOCH = "epoch"                            # 1-based epoch of the step (0 for the initial evaluation point)
GRAD_NORM = "grad_norm"                    # total gradient norm before clipping (dataset-level, max_grad_norm set)
STEP_SECONDS = "time/step_seconds"         # wall time of the step's forward/backward/update (persona)
STEP_BATCH_KEYS = (LOSS, REWARDS_CHOSEN, REWARDS_REJECTED, REWARDS_MARGINS, REWARDS_ACCURACIES, LOGPS_CHOSEN,
                   LOGPS_REJECTED)         # the per-batch means, in this order

# --- metrics.jsonl: the tracker at a tracked point (dataset-level: "displacement/<split>/..." instead) -------------
DISPLACEMENT_PREFERRED_LOGPROB_MEAN = "displacement/preferred_logprob_mean"        # mean log pi(y+|x), all examples
DISPLACEMENT_DISPREFERRED_LOGPROB_MEAN = "displacement/dispreferred_logprob_mean"  # mean log pi(y-|x)
DISPLACEMENT_PREFERRED_PROB_MEAN = "displacement/preferred_prob_mean"              # mean pi(y+|x) (probability)
DISPLACEMENT_DISPREFERRED_PROB_MEAN = "displacement/dispreferred_prob_mean"        # mean pi(y-|x)
DISPLACEMENT_PREFERRED_CHANGE_MEAN = "displacement/preferred_logprob_change_mean"  # mean log pi_t(y+) - log pi_0(y+)
DISPLACEMENT_DISPREFERRED_CHANGE_MEAN = "displacement/dispreferred_logprob_change_mean"  # same for y-
DISPLACEMENT_FRAC_FELL_SINCE_INIT = "displacement/frac_preferred_fell_since_init"  # fraction with log pi_t(y+) < init
DISPLACEMENT_FRAC_FELL_SINCE_PREV = "displacement/frac_preferred_fell_since_prev"  # fraction that fell since last point
# mean over examples of the largest drop so far, max_{t<t'} pi_t(y+) - pi_t'(y+)
DISPLACEMENT_LARGEST_DECREASE_MEAN = "displacement/largest_preferred_prob_decrease_mean"
DISPLACEMENT_LOSS_MEAN = "displacement/loss_mean"                                  # mean per-example loss (when given)
DISPLACEMENT_FRAC_LOSS_FELL_SINCE_PREV = "displacement/frac_loss_fell_since_prev"  # fraction whose loss fell
DISPLACEMENT_PREFIX = "displacement/"

# --- summary.json: the tracker summary (persona: top level; dataset-level: under TRACKER_PREFIX) -------------------
PREFERRED_LOGPROB_CHANGE_MEAN = "preferred_logprob_change_mean"          # mean final - initial log pi(y+|x)
DISPREFERRED_LOGPROB_CHANGE_MEAN = "dispreferred_logprob_change_mean"    # mean final - initial log pi(y-|x)
LARGEST_PREFERRED_PROB_DECREASE_MEAN = "largest_preferred_prob_decrease_mean"  # mean max_{t<t'} pi_t(y+) - pi_t'(y+)
FRAC_EXAMPLES_PREFERRED_PROB_FELL = "frac_examples_preferred_prob_fell"  # fraction with final pi(y+) < initial
NUM_STEPS = "num_steps"                    # optimizer steps the run took (both trainers)
TRACKER_PREFIX = "tracker/{split}/"        # dataset-level: the tracker summary of a split (train | test)
EVAL_METRICS_PREFIX = "eval_metrics/{split}/"  # dataset-level: evaluation statistics of a split (evaluation.py)
TRAINING_TRACKER_PREFIX = {"persona": "", "preference_similarity": "tracker/train/", "sorrybench": "tracker/train/"}
# ^ where each family (common/run_family.py) writes the tracker summary of its *training* examples

# --- summary.json and metrics.jsonl: gradient entanglement (both trainers, when grad_entanglement_interval is set) -
GRAD_ENTANGLEMENT_PREFIX = "grad_entanglement/"
GRAD_ENTANGLEMENT_COSINE = "grad_entanglement/cosine"  # mean cosine of grad log pi(y+) and grad log pi(y-)
# fraction of examples whose log pi(y+) the first-order prediction says falls
GRAD_ENTANGLEMENT_CHOSEN_DECREASE_PREDICTED = "grad_entanglement/chosen_decrease_predicted"
GRAD_ENTANGLEMENT_CHOSEN_DECREASE_ACCURACY = "grad_entanglement/chosen_decrease_accuracy"  # prediction = observation
GRAD_ENTANGLEMENT_NUM_STEPS = "grad_entanglement/num_steps"    # persona: steps diagnosed
GRAD_ENTANGLEMENT_NUM_POINTS = "grad_entanglement/num_points"  # dataset-level: probe points (same count, older name)

# --- summary.json and tensors.safetensors (persona): unembedding geometry of each (y+, y-) token pair ---------------
GEOMETRY_KEYS = ("preferred_norm", "dispreferred_norm", "inner_product", "cosine", "projection_coef",
                 "orthogonal_norm", "inner_minus_preferred_sq")  # formulas: persona_experiments/geometry.py
GEOMETRY_PREFIX = "geometry/{when}/"       # when = start | end (before training / after the last update)


def step_record(batch_means: Sequence[float], *, lr: float, epoch: int) -> dict[str, float]:
    """The training scalars of one optimizer step: `batch_means` in STEP_BATCH_KEYS order, then LR and EPOCH.

    Example: step_record([0.69, 0, 0, 0, 0, -5.1, -6.2], lr=1e-6, epoch=1) -> {"loss": 0.69, ..., "lr": 1e-6,
    "epoch": 1}."""
    if len(batch_means) != len(STEP_BATCH_KEYS):
        raise ValueError(f"step_record: expected {len(STEP_BATCH_KEYS)} batch means {STEP_BATCH_KEYS}, "
                         f"got {len(batch_means)}")
    return {**dict(zip(STEP_BATCH_KEYS, (float(v) for v in batch_means))), LR: lr, EPOCH: epoch}


def tracker_key(split: str, key: str) -> str:
    """'tracker/train/preferred_logprob_change_mean' for split 'train' and PREFERRED_LOGPROB_CHANGE_MEAN."""
    return TRACKER_PREFIX.format(split=split) + key


def geometry_key(when: str, key: str) -> str:
    """'geometry/start/cosine' for when 'start' and key 'cosine' (one of GEOMETRY_KEYS)."""
    return GEOMETRY_PREFIX.format(when=when) + key
