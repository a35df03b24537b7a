"""Figures of the similarity printer (docs/plots.md): Figure 2 with units, CHES histogram, per-example scatter.

    figure_2(preferred_rows, dispreferred_rows, path)   x = similarity quantile of the training subset; y = mean over
        training pairs of Δ log π(y+) (left) and Δ log π(y−) (right) in nats (log-probs summed over the response
        tokens), mean over seeds with ± 1 std error bars and every seed as a point; the model(s) in the title.
    join_examples(runs) -> per (similarity file, measure) the points (score of a training pair, its Δ log π(y+) in
        that run), read from the similarity file (`ches.ches.load_similarity_results`) and the run's
        `displacement_train.safetensors` (`per_example/example_ids` = rows of the data file, matched with the
        file's `sample_indices`; `per_example/preferred_logprob_change`).
    spearman(x, y) -> (rho, p value), scipy.stats.spearmanr (ranks, ties get their average rank).
    similarity_examples(groups, path)   per group: histogram of the measure over every scored pair of the file, the
        trained pairs as ticks under it, and the scatter with Spearman's rho in the title.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from common.data_locations import find_local_data_file
from common.plots import new_figure, save_figure

TENSORS_FILE = "displacement_train.safetensors"
CHANGE_UNITS = ("Δ log π in nats: log-prob summed over the response tokens, change from the initial to the trained "
                "model, mean over the training pairs; bars: ± 1 std over seeds (population)")


@dataclass
class ExampleGroup:
    """Per-example points of the runs that used one similarity file and measure."""

    similarity_file: str
    measure: str
    all_scores: list[float] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)  # {"run", "quantile", "seed", "example", "score", "change"}


def spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p value (scipy.stats.spearmanr); (nan, nan) below 3 points.
    Example: x [1, 2, 3, 4], y [1, 3, 2, 4] -> rho = 1 - 6 * 2 / (4 * 15) = 0.8."""
    if len(x) < 3:
        return math.nan, math.nan
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def join_examples(runs: list[tuple[Path, dict, dict]]) -> tuple[list[ExampleGroup], list[str]]:
    """Groups of per-example points (see the module docstring) and notes about runs that could not be joined."""
    import torch
    from safetensors.torch import load_file

    from ches.ches import load_similarity_results

    groups: dict[tuple[str, str], ExampleGroup] = {}
    loaded: dict[str, dict] = {}
    notes = []
    for run_dir, config, _summary in runs:
        name, measure = config["similarity_results_path"], config.get("pref_similarity_measure")
        path = find_local_data_file(name)
        if path is None or not (run_dir / TENSORS_FILE).exists():
            what = f"similarity file {name}" if path is None else TENSORS_FILE
            notes.append(f"{run_dir.name}: no per-example scatter ({what} not found)")
            continue
        if name not in loaded:
            loaded[name] = load_similarity_results(path, allow_partial=True)
        results = loaded[name]
        if measure not in results:
            notes.append(f"{run_dir.name}: similarity file {name} has no measure {measure!r}")
            continue
        scores = dict(zip(results["sample_indices"].tolist(), results[measure].tolist()))
        group = groups.get((name, measure))
        if group is None:
            group = groups[(name, measure)] = ExampleGroup(name, measure, [s for s in scores.values()
                                                                           if math.isfinite(s)])
        tensors = load_file(str(run_dir / TENSORS_FILE))
        ids = tensors["per_example/example_ids"].to(torch.int64).tolist()
        changes = tensors["per_example/preferred_logprob_change"].tolist()
        missing = [example for example in ids if example not in scores]
        if missing:
            notes.append(f"{run_dir.name}: training rows {missing[:5]} are not in similarity file {name}")
        quantile = config.get("quantile")
        group.points += [{"run": run_dir.name, "quantile": 0.0 if quantile is None else float(quantile),
                          "seed": config.get("random_seed"), "example": example, "score": scores[example],
                          "change": change} for example, change in zip(ids, changes) if example in scores]
    return list(groups.values()), notes


def similarity_examples(groups: list[ExampleGroup], path: Path) -> list[dict]:
    """Histogram + scatter per group (one row of two panels each); returns [{file, measure, points, rho, p}]."""
    figure, axes = new_figure(len(groups), 2, 5.4, 3.8)
    stats = []
    for index, group in enumerate(groups):
        histogram, scatter = axes[2 * index], axes[2 * index + 1]
        histogram.hist(group.all_scores, bins=min(30, max(5, len(group.all_scores) // 3)), color="grey", alpha=0.6,
                       label=f"all scored pairs ({len(group.all_scores)})")
        by_quantile: dict[float, list[dict]] = defaultdict(list)
        for point in group.points:
            by_quantile[point["quantile"]].append(point)
        for color_index, (quantile, points) in enumerate(sorted(by_quantile.items())):
            color = f"C{color_index % 10}"
            trained = sorted({(p["example"], p["score"]) for p in points})
            histogram.plot([score for _, score in trained], [0] * len(trained), "|", color=color, markersize=14,
                           markeredgewidth=2, label=f"trained, quantile {quantile:g}")
            scatter.scatter([p["score"] for p in points], [p["change"] for p in points], s=16, color=color,
                            alpha=0.7, label=f"quantile {quantile:g}")
        histogram.set_xlabel(group.measure)
        histogram.set_ylabel("pairs")
        histogram.set_title(f"{group.measure} over {Path(group.similarity_file).name}", fontsize=8)
        histogram.legend(fontsize=7)
        rho, p_value = spearman([p["score"] for p in group.points], [p["change"] for p in group.points])
        scatter.axhline(0.0, color="grey", linewidth=0.7)
        scatter.set_xlabel(f"{group.measure} of the training pair")
        scatter.set_ylabel("Δ log π(y+) (nats, summed over tokens)")
        scatter.set_title(f"per training pair, every run: Spearman ρ = {rho:.2f} (p = {p_value:.2g}, "
                          f"n = {len(group.points)})", fontsize=8)
        scatter.grid(alpha=0.3)
        scatter.legend(fontsize=7)
        stats.append({"similarity_file": group.similarity_file, "measure": group.measure,
                      "num_points": len(group.points), "spearman_rho": rho, "spearman_p": p_value,
                      "points": group.points})
    save_figure(figure, path)
    return stats


def figure_2(preferred_rows: list[dict], dispreferred_rows: list[dict], path: Path) -> Path:
    """Quantile vs mean Δ log π(y+) and Δ log π(y−) (see the module docstring); rows from `aggregate`."""
    panels = [(preferred_rows, "Δ log π(y+) (nats), preferred")]
    if dispreferred_rows:
        panels.append((dispreferred_rows, "Δ log π(y−) (nats), dispreferred"))
    figure, axes = new_figure(1, len(panels), 5.2, 4.3)
    markers = "osD^v<>"
    for axis, (rows, ylabel) in zip(axes, panels):
        series: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            series[(row["objective"], row["measure"])].append(row)
        for index, ((objective, measure), points) in enumerate(series.items()):
            color, marker = f"C{index % 10}", markers[index % len(markers)]
            quantiles = [p["quantile"] for p in points]
            axis.errorbar(quantiles, [p["mean"] for p in points], yerr=[p["std"] for p in points], color=color,
                          marker=marker, capsize=3, label=f"{objective} / {measure} (mean ± std)")
            seeds = [(p["quantile"], value) for p in points for value in p["values"]]
            axis.scatter([q for q, _ in seeds], [v for _, v in seeds], color=color, s=12, alpha=0.5,
                         marker=marker, label="each seed")
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xlabel("similarity quantile of the training subset (0 = lowest scores)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    models = sorted({str(row["model"]) for row in preferred_rows})
    figure.suptitle(f"log-prob change after training vs similarity quantile\n{', '.join(models)}", fontsize=10)
    return save_figure(figure, path, caption=CHANGE_UNITS)
