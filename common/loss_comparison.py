"""Compare preference losses across finished runs: one table row per loss setting (issue 6, "Plans and results").

Reads only `status.json`, `config.json` and `summary.json` of the run directories under one or more experiments
directories (no torch). Two kinds of runs are understood, told apart by the family that wrote them
(`common/run_family.py`, from config.json) and read where that family writes the tracker summary of its training
examples (`common.metric_keys.TRAINING_TRACKER_PREFIX`):

    persona single-token runs (persona_experiments/): the tracker summary at top level, e.g.
        `preferred_logprob_change_mean` (mean over the run's prompts of log pi_T(y+|x) - log pi_0(y+|x), nats)
    dataset-level runs (preference_training/trainer.py): the tracker summary of the *training* pairs under
        `tracker/train/`, e.g. `tracker/train/preferred_logprob_change_mean` (summed sequence log-probs)

Per run we read (all means over the run's examples):
    d_plus  = preferred_logprob_change_mean       d_minus = dispreferred_logprob_change_mean
    largest = largest_preferred_prob_decrease_mean (max_{t<t'} pi_t(y+) - pi_t'(y+), probability units)
    frac_fell = frac_examples_preferred_prob_fell (examples whose final pi(y+) is below the initial one)
    cosine, predicted, accuracy = grad_entanglement/{cosine, chosen_decrease_predicted, chosen_decrease_accuracy}
      (means over the diagnosed steps; absent when the run had grad_entanglement_interval null)
A run is *displaced* when d_plus < 0, i.e. the (mean) preferred log-prob fell from the initial to the final model.

Runs are grouped into sections by (kind, model) and, within a section, into rows by loss setting: `objective`,
the loss hyper-parameters that are set (`LOSS_FIELDS`) and `lr`. A row holds the number of runs, the fraction
displaced, and the means over runs of the quantities above (std over runs for d_plus; population std).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from common import metric_keys as mk
from common.io_utils import FinishedRun, find_finished_runs
from common.run_family import FAMILY_FIELDS, family_of_config
from common.statistics import mean, mean_std

# Display order of the rows (the order of common.losses.LOSSES; tests check they agree). Unknown objectives
# (a future loss) are listed after these, alphabetically.
OBJECTIVE_ORDER = ("cross_entropy", "dpo", "ipo", "cdpo", "robust_dpo", "hinge", "simpo", "dpop", "rdpo", "rrhf",
                   "orpo")
# LossConfig fields shown in the hyper-parameter label (symbol, field); None/False/0-sft fields are left out.
LOSS_FIELDS = (("β", "kl_coeff"), ("ε", "label_smoothing"), ("γ", "simpo_gamma"), ("λ_dpop", "dpop_lambda"),
               ("α", "rdpo_alpha"), ("λ_orpo", "orpo_lambda"), ("sft", "sft_coeff"),
               ("ipo_len_norm", "ipo_length_normalized"))
# summary-key prefix (TRAINING_TRACKER_PREFIX of the run's family) -> kind
KINDS = {"tracker/train/": "dataset-level, training pairs", "": "persona single-token"}
REQUIRED_KEYS = {"preferred_logprob_change": mk.PREFERRED_LOGPROB_CHANGE_MEAN,
                 "dispreferred_logprob_change": mk.DISPREFERRED_LOGPROB_CHANGE_MEAN,
                 "largest_preferred_prob_decrease": mk.LARGEST_PREFERRED_PROB_DECREASE_MEAN,
                 "frac_examples_preferred_fell": mk.FRAC_EXAMPLES_PREFERRED_PROB_FELL}
ENTANGLEMENT_KEYS = {"cosine": mk.GRAD_ENTANGLEMENT_COSINE, "predicted": mk.GRAD_ENTANGLEMENT_CHOSEN_DECREASE_PREDICTED,
                     "accuracy": mk.GRAD_ENTANGLEMENT_CHOSEN_DECREASE_ACCURACY}


@dataclass
class RunMetrics:
    """The numbers one finished run contributes (see the module docstring; None = not measured)."""

    run_dir: str
    kind: str
    model: str
    objective: str
    setting: str
    preferred_logprob_change: float
    dispreferred_logprob_change: float
    largest_preferred_prob_decrease: float
    frac_examples_preferred_fell: float
    cosine: float | None
    predicted: float | None
    accuracy: float | None

    @property
    def displaced(self) -> bool:
        return self.preferred_logprob_change < 0


def setting_label(config: dict) -> str:
    """Hyper-parameter label of a run, e.g. {'kl_coeff': 0.1, 'label_smoothing': 0.1, 'lr': 1e-06} ->
    'β=0.1, ε=0.1, lr=1e-06'. Fields that are None, False, or a zero sft_coeff are left out."""
    parts = []
    for symbol, field in LOSS_FIELDS:
        value = config.get(field)
        if value is None or value is False or (field == "sft_coeff" and value == 0):
            continue
        parts.append(symbol if value is True else f"{symbol}={value:g}")
    if config.get("lr") is not None:
        parts.append(f"lr={config['lr']:g}")
    return ", ".join(parts)


def _optional(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def run_metrics(run: FinishedRun) -> RunMetrics | str:
    """The run's metrics, or a note saying why it is skipped (not a displacement run, a diverged value).

    Raises KeyError/TypeError/ValueError for a config/summary of the wrong shape (the shared discovery in
    `common.io_utils.finished_runs_or_none` turns that into a skip note)."""
    config, summary, run_dir = run.config, run.summary, run.run_dir
    if "objective" not in config:
        return f"skipping {run_dir}: config.json has no 'objective' (not a preference-training run)"
    prefix = mk.TRAINING_TRACKER_PREFIX.get(family_of_config(config))
    if prefix is None:
        fields = " nor ".join(f"'{field}' ({family})" for family, field in FAMILY_FIELDS)
        return f"skipping {run_dir}: config.json has neither {fields}: not a run of a displacement-tracking family"
    required = {}
    for name, key in REQUIRED_KEYS.items():
        value = summary.get(prefix + key)
        if not isinstance(value, (int, float)):  # missing, or null (a NaN written by a diverged run)
            return f"skipping {run_dir}: summary.json has {prefix + key} = {value!r}, expected a number"
        required[name] = float(value)
    metrics = RunMetrics(run_dir=str(run_dir), kind=KINDS[prefix], model=str(config.get("model", "?")),
                         objective=str(config["objective"]), setting=setting_label(config), **required,
                         **{name: _optional(summary, key) for name, key in ENTANGLEMENT_KEYS.items()})
    format_markdown(aggregate([metrics]))  # a value of the wrong type fails here, for this run alone
    return metrics


def find_runs(experiments_dirs: list[Path]) -> tuple[list[RunMetrics], list[str]]:
    """Finished displacement runs under the directories (`common.io_utils.find_finished_runs`) and skip notes.

    Raises:
        RunDiscoveryError: a directory does not exist or holds no run directory.
    """
    runs, notes = find_finished_runs(experiments_dirs)
    metrics = [run_metrics(run) for run in runs]
    return [m for m in metrics if not isinstance(m, str)], notes + [m for m in metrics if isinstance(m, str)]


def _present_mean(values: list[float | None]) -> float | None:
    """Mean of the values a run measured (None = not measured); None if no run measured it."""
    return mean(values, missing="skip_none", empty=None)


def _row_order(row: dict) -> tuple:
    objective = row["objective"]
    known = objective in OBJECTIVE_ORDER
    return (0 if known else 1, OBJECTIVE_ORDER.index(objective) if known else 0, objective, row["setting"])


def aggregate(runs: list[RunMetrics]) -> list[dict]:
    """Sections [{kind, model, rows}], each row the statistics over the runs of one loss setting.

    Row keys: objective, setting, num_runs, num_displaced, frac_displaced, preferred_logprob_change_mean and _std,
    dispreferred_logprob_change_mean, largest_preferred_prob_decrease_mean, frac_examples_preferred_fell_mean,
    grad_cosine_mean, chosen_decrease_predicted_mean, chosen_decrease_accuracy_mean (None if no run measured
    it), run_dirs.
    """
    groups: dict[tuple[str, str], dict[tuple[str, str], list[RunMetrics]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[(run.kind, run.model)][(run.objective, run.setting)].append(run)
    sections = []
    for (kind, model), settings in sorted(groups.items()):
        rows = []
        for (objective, setting), members in settings.items():
            change_mean, change_std = mean_std([r.preferred_logprob_change for r in members], missing="keep")
            displaced = sum(r.displaced for r in members)
            rows.append({
                "objective": objective, "setting": setting, "num_runs": len(members), "num_displaced": displaced,
                "frac_displaced": displaced / len(members),
                "preferred_logprob_change_mean": change_mean, "preferred_logprob_change_std": change_std,
                "dispreferred_logprob_change_mean": _present_mean([r.dispreferred_logprob_change for r in members]),
                "largest_preferred_prob_decrease_mean":
                    _present_mean([r.largest_preferred_prob_decrease for r in members]),
                "frac_examples_preferred_fell_mean": _present_mean([r.frac_examples_preferred_fell for r in members]),
                "grad_cosine_mean": _present_mean([r.cosine for r in members]),
                "chosen_decrease_predicted_mean": _present_mean([r.predicted for r in members]),
                "chosen_decrease_accuracy_mean": _present_mean([r.accuracy for r in members]),
                "run_dirs": sorted(r.run_dir for r in members),
            })
        sections.append({"kind": kind, "model": model, "rows": sorted(rows, key=_row_order)})
    return sections


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


TABLE_HEADER = ("| loss | hyper-parameters | runs | displaced | examples with π(y+) fell | Δ log π(y+) | Δ log π(y−) "
                "| largest π(y+) decrease | grad cosine | predicted fall / accuracy |")


def format_markdown(sections: list[dict]) -> str:
    """Markdown: a heading and a table per section (columns described in docs/loss_comparison.md)."""
    lines = []
    for section in sections:
        lines += [f"### {section['model']} — {section['kind']}", "", TABLE_HEADER, "|" + "---|" * 10]
        for row in section["rows"]:
            lines.append(
                f"| {row['objective']} | {row['setting']} | {row['num_runs']} "
                f"| {row['num_displaced']}/{row['num_runs']} | {_fmt(row['frac_examples_preferred_fell_mean'], '.2f')} "
                f"| {row['preferred_logprob_change_mean']:+.3f} ± {row['preferred_logprob_change_std']:.3f} "
                f"| {_fmt(row['dispreferred_logprob_change_mean'], '+.3f')} "
                f"| {_fmt(row['largest_preferred_prob_decrease_mean'], '.3g')} "
                f"| {_fmt(row['grad_cosine_mean'], '.3f')} "
                f"| {_fmt(row['chosen_decrease_predicted_mean'], '.2f')} / "
                f"{_fmt(row['chosen_decrease_accuracy_mean'], '.2f')} |")
        lines.append("")
    return "\n".join(lines)
