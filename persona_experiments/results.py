"""Aggregate persona runs: read each run's config.json / summary.json / metrics.jsonl (no model, no torch).

Runs are found as directories under the experiments directory that hold a `status.json`; a run counts when its
status is "done" and `summary.json` exists (others are skipped with a note). Runs are grouped into *settings*
(model, objective, initial weights = base or checkpoint, y+ / y- tokens, kl_coeff, lr), so SFT and DPO runs of
one plan, or several token pairs, are reported separately. Per setting:
    runs, runs excluded because the loss ever increased between consecutive tracked steps (kept with
    keep_unstable), runs in which the preferred probability fell (final < initial, mean over the run's prompts),
    mean ± std (population) over runs of the initial / minimum / final preferred probability and of the largest
    decrease, the tokens whose probability increased most (in how many runs' final top-k lists they appear, and
    their mean increase), the unembedding geometry of the pair (means at start and end), and gradient-
    entanglement means when the runs computed them.
Next to these, the reference printer's statistics with its definitions (`reference_statistics.py`: decreased at
some step, first decrease, decrease while the loss fell, largest decreases with their steps, top-1/2/3 tokens at
steps 1..100, geometry, hidden norms), over the runs its filter keeps (loss never rose; exact comparison) and
that tracked every step; those read tensors.safetensors and top_tokens.jsonl.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

from common.io_utils import FinishedRun, find_finished_runs, read_jsonl
from common.statistics import mean, mean_std
from persona_experiments.reference_statistics import (REFERENCE_MAX_STEP, format_reference_block,
                                                      is_every_step_tracked, load_run_arrays,
                                                      reference_loss_increased, reference_statistics)

PROB_STATS = ("initial_preferred_prob_mean", "min_preferred_prob_mean", "final_preferred_prob_mean",
              "largest_preferred_prob_decrease_mean", "initial_dispreferred_prob_mean",
              "final_dispreferred_prob_mean", "preferred_logprob_change_mean")
GEOMETRY_STATS = ("preferred_norm", "dispreferred_norm", "inner_product", "cosine", "projection_coef",
                  "orthogonal_norm", "inner_minus_preferred_sq")
ENTANGLEMENT_STATS = ("grad_entanglement/cosine", "grad_entanglement/ratio",
                      "grad_entanglement/chosen_decrease_predicted", "grad_entanglement/chosen_decrease_accuracy")


# One finished run: its directory, config and summary (metrics.jsonl is read on demand).
RunRecord = FinishedRun


def find_runs(experiments_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """Finished runs under `experiments_dir` (recursively) and notes about the skipped ones.

    Raises:
        RunDiscoveryError: the directory does not exist, or holds no run directory (no status.json anywhere).
    """
    return find_finished_runs([experiments_dir])


def checked_run(run: RunRecord) -> RunRecord:
    """`run` after summarising it alone and reading its trajectory: a config/summary/metrics of the wrong shape
    raises here (KeyError, TypeError, ValueError, ...) and the shared discovery skips the run with a note."""
    summarize_runs([run], keep_unstable=True)
    load_trajectory(run)
    return run


def setting_of(run: RunRecord) -> str:
    """Group label: model, objective, base/checkpoint init, 'y+ vs y-', beta and lr."""
    config, summary = run.config, run.summary
    init = "ckpt" if config.get("load_model_checkpoint") else "base"
    preferred = "|".join(sorted(set(summary.get("preferred_token_texts", ["?"])), key=str))
    dispreferred = "|".join(sorted(set(summary.get("dispreferred_token_texts", ["?"])), key=str))
    return (f"{config.get('model')} {config.get('objective')} ({init}) {preferred!r} vs {dispreferred!r} "
            f"beta={config.get('kl_coeff')} lr={config.get('lr')}")


def aggregate_top_tokens(runs: list[RunRecord], ordering: str = "by_prob_increase", limit: int = 5) -> list[dict]:
    """Tokens in the runs' final top-k lists: count of (run, prompt) lists containing them and mean increase,
    sorted by count then mean increase (descending). Example: lists [a +0.2, b +0.1] and [a +0.4] ->
    a: count 2, mean 0.3; b: count 1, mean 0.1."""
    increases: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for example in run.summary.get("final_top_tokens", []):
            for entry in example.get(ordering, []):
                increases[entry["token"]].append(float(entry["increase"]))
    rows = [{"token": token, "count": len(values), "mean_increase": sum(values) / len(values)}
            for token, values in increases.items()]
    rows.sort(key=lambda row: (-row["count"], -row["mean_increase"]))
    return rows[:limit]


def reference_block(runs: list[RunRecord], keep_unstable: bool, max_step: int) -> dict:
    """`reference_statistics` over the runs that have tensors with every step tracked and (unless keep_unstable)
    pass the reference filter; counts of the runs left out and why."""
    arrays, missing, not_every_step = [], [], []
    for run in runs:
        try:
            loaded = load_run_arrays(run.run_dir, run.name, int(run.summary.get("num_steps", 0)))
        except (FileNotFoundError, KeyError, ValueError):
            missing.append(run.name)
            continue
        (arrays if is_every_step_tracked(loaded, max_step) else not_every_step).append(loaded)
    excluded = [] if keep_unstable else [run.name for run in arrays if reference_loss_increased(run)]
    kept = [run for run in arrays if run.name not in excluded]
    out = {"num_runs_without_tensors": len(missing), "num_runs_not_every_step": len(not_every_step),
           "num_runs_excluded_loss_increased": len(excluded), "excluded_runs": excluded}
    if kept:
        out.update(reference_statistics(kept, max_step))
    return out


def _over_runs(runs: list[RunRecord], key: str, statistic: Callable):
    """`statistic` (`mean` or `mean_std`) of summary[key] over `runs`; runs without a finite value are skipped."""
    return statistic([run.summary.get(key) for run in runs], missing="skip_nonfinite")


def summarize_setting(runs: list[RunRecord], keep_unstable: bool, max_step: int = REFERENCE_MAX_STEP) -> dict:
    """Statistics of one setting (see module docstring); `runs` are all finished runs of the setting."""
    unstable = [run.name for run in runs if run.summary.get("loss_ever_increased")]
    used = runs if keep_unstable else [run for run in runs if not run.summary.get("loss_ever_increased")]
    out: dict = {"num_runs": len(runs), "num_unstable": len(unstable), "unstable_runs": unstable,
                 "num_used": len(used), "runs": [run.name for run in used]}
    fell = [run for run in used if run.summary.get("final_preferred_prob_mean", math.nan)
            < run.summary.get("initial_preferred_prob_mean", math.nan)]
    out["num_preferred_final_below_initial"] = len(fell)
    for key in PROB_STATS:
        out[key] = dict(zip(("mean", "std"), _over_runs(used, key, mean_std)))
    out["top_tokens_by_prob_increase"] = aggregate_top_tokens(used, "by_prob_increase")
    out["top_tokens_by_logprob_increase"] = aggregate_top_tokens(used, "by_logprob_increase")
    out["geometry"] = {f"{when}/{key}": _over_runs(used, f"geometry/{when}/{key}", mean)
                       for when in ("start", "end") for key in GEOMETRY_STATS}
    entanglement = {key: _over_runs(used, key, mean) for key in ENTANGLEMENT_STATS
                    if any(key in run.summary for run in used)}
    if entanglement:
        out["grad_entanglement"] = entanglement
    out["reference"] = reference_block(runs, keep_unstable, max_step)
    return out


def summarize_runs(runs: list[RunRecord], keep_unstable: bool, max_step: int = REFERENCE_MAX_STEP) -> dict[str, dict]:
    """Setting label -> `summarize_setting` result, settings in order of first appearance."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[setting_of(run)].append(run)
    return {label: summarize_setting(group, keep_unstable, max_step) for label, group in groups.items()}


def _pm(stat: dict) -> str:
    """'mean ± std' with 4 significant digits, '-' if undefined."""
    if stat["mean"] is None or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def format_table(results: dict[str, dict]) -> str:
    """Plain-text report: one block per setting with counts, probabilities, top tokens, geometry."""
    lines = []
    for label, stats in results.items():
        lines.append(f"== {label}")
        lines.append(f"   runs {stats['num_runs']}, excluded (loss increased) {stats['num_unstable']}, "
                     f"used {stats['num_used']}, preferred prob final < initial in "
                     f"{stats['num_preferred_final_below_initial']}")
        lines.append(f"   {'preferred prob':<24}{'initial':>22}{'minimum':>22}{'final':>22}")
        lines.append(f"   {'':<24}{_pm(stats['initial_preferred_prob_mean']):>22}"
                     f"{_pm(stats['min_preferred_prob_mean']):>22}{_pm(stats['final_preferred_prob_mean']):>22}")
        lines.append(f"   largest decrease {_pm(stats['largest_preferred_prob_decrease_mean'])}   preferred log-prob "
                     f"change {_pm(stats['preferred_logprob_change_mean'])}   dispreferred prob "
                     f"{_pm(stats['initial_dispreferred_prob_mean'])} -> {_pm(stats['final_dispreferred_prob_mean'])}")
        tokens = ", ".join(f"{row['token']!r} ({row['count']}x, +{row['mean_increase']:.3g})"
                           for row in stats["top_tokens_by_prob_increase"])
        lines.append(f"   most increased tokens (prob): {tokens or '-'}")
        geometry = stats["geometry"]
        lines.append("   geometry start: " + ", ".join(
            f"{key} {geometry[f'start/{key}']:.3f}" for key in ("preferred_norm", "dispreferred_norm",
                                                               "inner_product", "cosine", "projection_coef",
                                                               "orthogonal_norm")))
        if "grad_entanglement" in stats:
            lines.append("   gradient entanglement: " + ", ".join(
                f"{key.split('/')[-1]} {value:.3f}" for key, value in stats["grad_entanglement"].items()))
        reference = stats["reference"]
        if "num_examples" in reference:
            lines.extend(format_reference_block(reference))
        skipped = (reference["num_runs_excluded_loss_increased"], reference["num_runs_not_every_step"],
                   reference["num_runs_without_tensors"])
        if any(skipped):
            lines.append("     reference statistics leave out runs: loss rose {} (reference filter), not every step "
                         "tracked {}, no tensors file {}".format(*skipped))
    return "\n".join(lines)


def load_trajectory(run: RunRecord) -> tuple[list[int], list[float], list[float]]:
    """(steps, preferred log-prob, dispreferred log-prob) at the run's tracked steps, means over its prompts
    (nats), from metrics.jsonl (`displacement/{preferred,dispreferred}_logprob_mean`)."""
    steps, preferred, dispreferred = [], [], []
    metrics_path = run.run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        return steps, preferred, dispreferred
    for record in read_jsonl(metrics_path, allow_partial_last_line=True):
        if record.get("displacement/preferred_logprob_mean") is not None:
            steps.append(record["step"])
            preferred.append(record["displacement/preferred_logprob_mean"])
            dispreferred.append(record["displacement/dispreferred_logprob_mean"])
    return steps, preferred, dispreferred


def plot_trajectories(runs: list[RunRecord], results: dict[str, dict], path: Path) -> Path:
    """One panel per setting: π(y+) and π(y−) over steps on a log axis, the geometric mean over the used runs
    (seeds) with a band of ± 1 std of the log-prob (`common.plots.plot_mean_band`)."""
    from common.plots import PREFERRED_COLOR, DISPREFERRED_COLOR, new_figure, plot_mean_band, save_figure

    by_name = {run.name: run for run in runs}
    columns = min(len(results), 3)
    figure, axes = new_figure(-(-len(results) // columns), columns, 5.5, 3.8)
    for axis, (label, stats) in zip(axes, results.items()):
        trajectories = [load_trajectory(by_name[name]) for name in stats["runs"]]
        trajectories = [t for t in trajectories if t[0]]
        for index, color, symbol in ((1, PREFERRED_COLOR, "y+"), (2, DISPREFERRED_COLOR, "y−")):
            plot_mean_band(axis, [(t[0], t[index]) for t in trajectories], color=color, label=f"π({symbol})",
                           exponentiate=True)
        axis.set_yscale("log")
        axis.set_title(label, fontsize=7)
        axis.set_xlabel("step")
        axis.set_ylabel("π (geometric mean over prompts, runs)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, title=f"band: ± 1 std of log π over {len(trajectories)} run(s)", title_fontsize=7)
    for axis in axes[len(results):]:
        axis.axis("off")
    return save_figure(figure, path, dpi=90)
