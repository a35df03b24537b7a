"""Section 5 (Figure 2 analogue) from the runs of reproduction/plans/section5_smollm2.json.

Two results, both read from run directories (nothing is recomputed with a model):
  * quantile windows: per (measure, quantile), the mean ± population std over seeds of the training pairs' mean
    preferred log-prob change (`eval_metrics/train/preferred_logprobs_change_mean`, nats), through
    preference_similarity_results_printer.aggregate (the printer's own numbers);
  * per-example rank correlation: in each random-subset run (no similarity filter), Spearman's rho between a
    pair's score under a measure (the similarity file, matched by dataset row: `sample_indices` there,
    `per_example/example_ids` in displacement_train.safetensors) and its preferred log-prob change
    (`per_example/preferred_logprob_change`); mean ± std over the runs. Pairs with a NaN score are left out.
    rho = Pearson correlation of the average ranks (ties share the mean of their ranks).
CHES and LN-CHES are large when y+ and y- are similar, so they should correlate negatively with the change
(more similar, larger decrease); so should minus the edit distance and the hidden-state inner product if they
predicted displacement as well.
Verdict: "reproduced" when CHES's mean rho is negative and below those of the edit distance and the hidden-state
inner product, "partly" when it is negative but not the lowest, "not reproduced" otherwise, "not run" without
random-subset runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from common.io_utils import RunDiscoveryError, find_finished_runs
from common.statistics import mean_std
from preference_similarity.plots import figure_2
from preference_similarity_results_printer import DEFAULT_METRIC, aggregate, similarity_run


def collect_runs(outputs_dir: Path) -> list[tuple[Path, dict, dict]]:
    """(run dir, config, summary) of the finished similarity-filtered runs under `outputs_dir` (the printer's rule)."""
    try:
        runs, _ = find_finished_runs([outputs_dir])
    except RunDiscoveryError:
        return []
    entries = [similarity_run(run, DEFAULT_METRIC) for run in runs]
    return [entry for entry in entries if not isinstance(entry, str)]

CORRELATION_MEASURES = ("ches_scores", "ln_ches_scores", "minus_normalized_edit_distances",
                        "last_hidden_embedding_inner_prods")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (`scipy.stats.rankdata`). Example: [10, 20, 20, 5] -> [2, 3.5, 3.5, 1]."""
    return rankdata(np.asarray(values, dtype=np.float64), method="average")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (NaN with fewer than 2 points or a constant input). Example: x [1, 2, 3], y [3, 1, 2] -> -0.5."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)


def per_example_correlations(sample_indices: np.ndarray, scores: dict[str, np.ndarray], example_ids: np.ndarray,
                             logprob_change: np.ndarray) -> dict[str, dict]:
    """Per measure: {"rho", "num_pairs"} between the scores of the trained rows and their log-prob change."""
    position = {int(row): index for index, row in enumerate(np.asarray(sample_indices).tolist())}
    out = {}
    for measure, values in scores.items():
        matched = [(float(values[position[int(row)]]), float(change))
                   for row, change in zip(np.asarray(example_ids).tolist(), np.asarray(logprob_change).tolist())
                   if int(row) in position and math.isfinite(float(values[position[int(row)]]))]
        pairs = np.asarray(matched, dtype=np.float64).reshape(-1, 2)
        out[measure] = {"rho": spearman(pairs[:, 0], pairs[:, 1]), "num_pairs": len(pairs)}
    return out


def load_similarity_scores(path: Path) -> dict[str, np.ndarray]:
    """`sample_indices` and the CORRELATION_MEASURES present in a results_samples.pt, as numpy arrays."""
    from ches.results_file import load_similarity_results

    results = load_similarity_results(path)
    return {key: np.asarray(results[key].tolist()) for key in ("sample_indices", *CORRELATION_MEASURES)
            if key in results}


def collect_section5(outputs_dir: Path, similarity_path: Path | None = None) -> dict:
    """Windows table rows and per-example correlations of a Section 5 outputs directory.

    `similarity_path`: the scored file; default: the `similarity_results_path` of the window runs."""
    from safetensors.numpy import load_file

    windows = aggregate(collect_runs(Path(outputs_dir)), DEFAULT_METRIC)
    notes: list[str] = []
    if similarity_path is None:
        paths = set(_window_similarity_paths(Path(outputs_dir)))
        similarity_path = Path(sorted(paths)[0]) if paths else None
    correlations: dict[str, list[dict]] = {}
    random_runs = _random_subset_runs(Path(outputs_dir))
    if random_runs and (similarity_path is None or not Path(similarity_path).exists()):
        notes.append(f"similarity file {similarity_path} not found: per-example correlations not computed")
    elif random_runs:
        similarity = load_similarity_scores(Path(similarity_path))
        scores = {key: value for key, value in similarity.items() if key != "sample_indices"}
        for run_dir in random_runs:
            tensors = load_file(str(run_dir / "displacement_train.safetensors"))
            result = per_example_correlations(similarity["sample_indices"], scores,
                                              tensors["per_example/example_ids"],
                                              tensors["per_example/preferred_logprob_change"])
            for measure, value in result.items():
                correlations.setdefault(measure, []).append({"run": run_dir.name, **value})
    summary_correlations = {measure: {"runs": rows, **dict(zip(("mean", "std"), mean_std(
        [row["rho"] for row in rows], missing="skip_nonfinite", empty=None)))}
                            for measure, rows in correlations.items()}
    return {"windows": windows, "verdict": verdict(summary_correlations),
            "similarity_path": None if similarity_path is None else str(similarity_path),
            "correlations": summary_correlations,
            "num_random_subset_runs": len(random_runs), "notes": notes}


def verdict(correlations: dict) -> str:
    """The module docstring's rule on the mean rho per measure."""
    ches = (correlations.get("ches_scores") or {}).get("mean")
    if ches is None:
        return "not run"
    others = [(correlations.get(name) or {}).get("mean") for name in ("minus_normalized_edit_distances",
                                                                       "last_hidden_embedding_inner_prods")]
    if ches >= 0:
        return "not reproduced"
    if any(other is None for other in others):  # a measure without a correlation cannot be beaten
        return "partly"
    return "reproduced" if all(ches < other for other in others) else "partly"


def _finished(run_dir: Path) -> bool:
    import json

    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8")).get("status") == "done"
    except (OSError, ValueError):
        return False


def _window_similarity_paths(outputs_dir: Path) -> list[str]:
    return [config["similarity_results_path"] for _, config, _ in collect_runs(outputs_dir)]


def _random_subset_runs(outputs_dir: Path) -> list[Path]:
    """Finished runs without a similarity filter that saved per-example training tensors."""
    import json

    runs = []
    for run_dir in sorted(p for p in outputs_dir.iterdir() if p.is_dir()):
        try:
            config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (not config.get("similarity_results_path") and _finished(run_dir)
                and (run_dir / "displacement_train.safetensors").exists()):
            runs.append(run_dir)
    return runs


def section5_evidence(summary: dict) -> str:
    """The headline's evidence cell: mean per-pair rho of each measure. Example: 'mean per-pair ρ with
    Δ log π(y+) (3 runs): ches_scores -0.51, ...'."""
    described = ", ".join(f"{measure} {value['mean']:+.2f}" for measure, value in summary["correlations"].items()
                          if value["mean"] is not None)
    return (f"mean per-pair ρ with Δ log π(y+) ({summary['num_random_subset_runs']} random-subset runs): {described}"
            if described else "no per-pair correlations")


def section5_reading(summary: dict) -> list[str]:
    """A paragraph comparing the windows and correlations with the paper, every number read from `summary`."""
    sentences = ["**Reading.** In the paper (Figure 2), the preferred log-prob falls more in windows of higher CHES, "
                 "and CHES orders the windows more clearly than the edit distance or the hidden-state inner product."]
    windows = summary["windows"]
    if windows:
        fell = [row["frac_preferred_decreased_mean"] for row in windows
                if row["frac_preferred_decreased_mean"] is not None]
        rose = sum(row["mean"] > 0 for row in windows)
        sentences.append(f"Here the mean Δ log π(y+) is positive in {rose} of {len(windows)} windows"
                         + (f" and π(y+) fell for at most {max(fell):.0%} of a window's pairs" if fell else "")
                         + (", so the windows compare sizes of increase, not of decrease" if rose == len(windows)
                            else "") + ".")
        ches = sorted((row for row in windows if row["measure"] == "ches_scores"), key=lambda row: row["quantile"])
        if len(ches) >= 2:
            sentences.append("CHES windows from quantile 0 to 1: " + ", ".join(f"{row['mean']:+.2f}" for row in ches)
                             + " nats.")
    correlations = {measure: value["mean"] for measure, value in summary["correlations"].items()
                    if value["mean"] is not None}
    if correlations:
        ordered = sorted(correlations.items(), key=lambda item: item[1])
        sentences.append("Per pair, the most negative rank correlation with Δ log π(y+) is "
                         + ", then ".join(f"{measure} ({rho:+.2f})" for measure, rho in ordered) + ".")
    return [" ".join(sentences), ""]


def section5_result_lines(summary: dict) -> list[str]:
    """Markdown tables of the windows and the correlations."""
    lines = [f"Verdict (rule in reproduction/section5_report.py): **{summary['verdict']}**.", "",
             "Quantile windows: mean preferred log-prob change of the training pairs (nats; mean ± std over seeds).",
             "", "| measure | quantile | runs | Δ log π(y+) | fraction of pairs whose π(y+) fell |",
             "|---|---|---|---|---|"]
    for row in summary["windows"]:
        fraction = row["frac_preferred_decreased_mean"]
        lines.append(f"| {row['measure']} | {row['quantile']:g} | {row['num_runs']} | {row['mean']:.3g} ± "
                     f"{row['std']:.2g} | {'-' if fraction is None else f'{fraction:.2f}'} |")
    lines += ["", "Per-example Spearman rho between each measure and the preferred log-prob change "
              f"({summary['num_random_subset_runs']} random-subset runs; mean ± std over runs):", "",
              "| measure | rho | pairs per run (trained; prompts over max_input_length are dropped) |", "|---|---|---|"]
    for measure, value in summary["correlations"].items():
        rho = "-" if value["mean"] is None else f"{value['mean']:.3f} ± {value['std']:.3f}"
        counts = ", ".join(str(row["num_pairs"]) for row in value["runs"])
        lines.append(f"| {measure} | {rho} | {counts} |")
    lines += [f"- note: {note}" for note in summary["notes"]]
    return lines + [""]


def plot_section5(summary: dict, figures_dir: Path) -> Path | None:
    """section5_quantiles.png: the windows' rows drawn by the results printer's own plot (None without rows)."""
    if not summary["windows"]:
        return None
    path = Path(figures_dir) / "section5_quantiles.png"
    return figure_2(summary["windows"], [], path)
