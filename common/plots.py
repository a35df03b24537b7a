"""Figures a researcher looks at: the per-run overview panels and the shared drawing helpers of the printers.

Per run (`plot_run_overview`, called by `MetricsLogger.close` when `save_metric_plots` is on) two PNGs in
`<run dir>/plots/`:
    overview.png        labelled panels: probabilities of y+ and y- together on a log scale (persona single tokens:
                        the mean over prompts of pi(y|x); sequences, whose probabilities underflow, the mean log-prob
                        in nats), their log-prob change since step 0, loss, implicit rewards / margins, fractions
                        (displaced examples, accuracy), largest preferred-probability decrease, gradient cosine.
    other_metrics.png   small panels for every other numeric metric that changes during the run (for sequences the
                        probability-unit curves are left out, for single tokens the mean log-probs, which the
                        probability panel shows).
Metrics that never change (`lr`, `epoch` in a one-epoch run) are not drawn; they are listed under the figure.
Series with fewer than `MARKER_LIMIT` points (evaluation points) are drawn with markers.

Matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.io_utils import read_jsonl

MARKER_LIMIT = 40
OVERVIEW_FILE = "overview.png"
OTHER_FILE = "other_metrics.png"
PREFERRED_COLOR, DISPREFERRED_COLOR = "tab:blue", "tab:red"
SPLIT_STYLES = {"": "-", "train": "-", "test": "--", "probe": "-"}


@dataclass(frozen=True)
class Series:
    """One curve of a panel: the metric `name` under `displacement/[<split>/]` or at top level, and its label."""

    name: str
    label: str
    color: str | None = None


@dataclass(frozen=True)
class Panel:
    """A labelled axis: title, y label, curves, whether the y axis is logarithmic, a zero line."""

    title: str
    ylabel: str
    series: tuple[Series, ...]
    log_y: bool = False
    zero_line: bool = False


P, D = PREFERRED_COLOR, DISPREFERRED_COLOR
PROBABILITY_PANEL = Panel("probabilities (log scale)", "mean over examples of π(y|x)",
                          (Series("preferred_prob_mean", "π(y+)", P), Series("dispreferred_prob_mean", "π(y−)", D)),
                          log_y=True)
LOGPROB_PANEL = Panel("log-probabilities", "mean log π(y|x) (nats, summed over tokens)",
                      (Series("preferred_logprob_mean", "log π(y+)", P),
                       Series("dispreferred_logprob_mean", "log π(y−)", D)))
OVERVIEW_PANELS = (
    Panel("change since step 0", "Δ log π (nats)", (Series("preferred_logprob_change_mean", "Δ log π(y+)", P),
                                                     Series("dispreferred_logprob_change_mean", "Δ log π(y−)", D)),
          zero_line=True),
    Panel("loss", "loss", (Series("loss", "batch loss", "black"), Series("loss_mean", "tracked examples", "grey"))),
    Panel("implicit rewards β·log(π/π_ref)", "reward", (Series("rewards/chosen", "y+", P),
                                                         Series("rewards/rejected", "y−", D),
                                                         Series("rewards/margins", "margin", "black")),
          zero_line=True),
    Panel("fractions", "fraction of examples", (Series("frac_preferred_fell_since_init", "π(y+) below step 0", P),
                                                Series("frac_preferred_fell_since_prev", "π(y+) fell this step", "c"),
                                                Series("frac_loss_fell_since_prev", "loss fell this step", "grey"),
                                                Series("rewards/accuracies", "reward accuracy", "black"))),
    LARGEST_DECREASE_PANEL := Panel("largest π(y+) decrease so far", "probability",
                                    (Series("largest_preferred_prob_decrease_mean", "mean over examples", P),)),
    Panel("gradient entanglement", "cosine(∇log π(y+), ∇log π(y−))",
          (Series("grad_entanglement/cosine", "cosine", "purple"),), zero_line=True),
)


def load_curves(metrics_path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) of every numeric (non-bool) metric in a metrics JSONL file, in file order."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_jsonl(metrics_path, allow_partial_last_line=True) if Path(metrics_path).exists() else []:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return curves


def is_constant(values: Sequence[float]) -> bool:
    """True if every finite value equals the first one (e.g. a fixed `lr`). Example: [1e-3, 1e-3] -> True."""
    finite = [v for v in values if math.isfinite(v)]
    return all(v == finite[0] for v in finite) if finite else True


def matching_keys(curves: dict, name: str) -> list[tuple[str, str]]:
    """(key, split) of the curves that hold metric `name`: the key itself (split "") or `<prefix>/<name>`, the split
    being the prefix without its `displacement` parts: `displacement/<name>` (persona, split ""),
    `displacement/train/<name>` (dataset-level, "train"), `probe/displacement/<name>` (the TRL callback, "probe").
    Keys under `eval_metrics/` are left to the distribution panel. Plain keys come first, then by key."""
    found = []
    for key in sorted(curves, key=lambda k: (k != name, k)):
        if key != name and not key.endswith("/" + name):
            continue
        prefix = key[: -len(name)].strip("/").split("/") if key != name else []
        if prefix and prefix[0] == "eval_metrics":
            continue
        found.append((key, "/".join(part for part in prefix if part != "displacement")))
    return found


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_panel(axis, panel: Panel, curves: dict) -> list[str]:
    """Draw the panel's curves that the run logged; return the keys drawn (none drawn: the axis is hidden)."""
    drawn = []
    for series in panel.series:
        for key, split in matching_keys(curves, series.name):
            steps, values = curves[key]
            if panel.log_y:
                kept = [(s, v) for s, v in zip(steps, values) if v > 0]
                steps, values = [s for s, _ in kept], [v for _, v in kept]
            label = series.label + (f" ({split})" if split else "")
            axis.plot(steps, values, SPLIT_STYLES.get(split, ":"), color=series.color, label=label,
                      marker="o" if len(steps) < MARKER_LIMIT else None, markersize=3)
            drawn.append(key)
    if not drawn:
        axis.set_visible(False)
        return drawn
    if panel.log_y:
        axis.set_yscale("log")
    if panel.zero_line:
        axis.axhline(0.0, color="grey", linewidth=0.7)
    axis.set_title(panel.title, fontsize=9)
    axis.set_xlabel("step", fontsize=8)
    axis.set_ylabel(panel.ylabel, fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return drawn


QUANTILE_BANDS = (("q10", "q90", 0.12), ("q25", "q75", 0.25))


def draw_change_distribution(axis, curves: dict, split: str) -> list[str]:
    """Median over examples of Δ log π(y+) and Δ log π(y−) at each evaluation point of `split`, with the
    10-90 % and 25-75 % ranges as bands (the trainer's `eval_metrics/<split>/<side>_logprobs_change_<stat>`).
    Returns the keys drawn (none: the axis is hidden)."""
    drawn = []
    for side, color, symbol in (("preferred", PREFERRED_COLOR, "y+"), ("dispreferred", DISPREFERRED_COLOR, "y−")):
        prefix = f"eval_metrics/{split}/{side}_logprobs_change_"
        if prefix + "median" not in curves:
            continue
        steps, median = curves[prefix + "median"]
        axis.plot(steps, median, color=color, marker="o" if len(steps) < MARKER_LIMIT else None, markersize=3,
                  label=f"median Δ log π({symbol})")
        drawn.append(prefix + "median")
        for low, high, alpha in QUANTILE_BANDS:
            if prefix + low in curves and prefix + high in curves:
                axis.fill_between(steps, curves[prefix + low][1], curves[prefix + high][1], color=color,
                                  alpha=alpha, linewidth=0)
                drawn += [prefix + low, prefix + high]
    if not drawn:
        axis.set_visible(False)
        return drawn
    axis.axhline(0.0, color="grey", linewidth=0.7)
    axis.set_title(f"Δ log π over {split} examples (bands: 10-90 %, 25-75 %)", fontsize=9)
    axis.set_xlabel("step", fontsize=8)
    axis.set_ylabel("Δ log π (nats)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return drawn


MIN_PLOTTED_PROBABILITY = 1e-12


def uses_probabilities(curves: dict) -> bool:
    """True if every logged mean probability is >= MIN_PLOTTED_PROBABILITY (single tokens: draw probabilities).
    Sequence probabilities (1e-76 for 30 tokens) are drawn as log-probs: their mean over examples is the largest
    one alone, and their decreases are meaningless in probability units."""
    values = [v for name in ("preferred_prob_mean", "dispreferred_prob_mean")
              for key, _ in matching_keys(curves, name) for v in curves[key][1]]
    return bool(values) and min(values) >= MIN_PLOTTED_PROBABILITY


def _grid(plt, count: int, columns: int, width: float, height: float):
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    return figure, list(axes.flat)


PROBABILITY_NAMES = ("preferred_prob_mean", "dispreferred_prob_mean", "largest_preferred_prob_decrease_mean")
LOGPROB_NAMES = ("preferred_logprob_mean", "dispreferred_logprob_mean")


@dataclass
class OverviewLayout:
    """What the two figures of a run show: overview panels, change-distribution splits, the other changing
    metrics (other_metrics.png) and the constant ones (listed under the overview)."""

    panels: list[Panel]
    distribution_splits: list[str]
    others: list[str]
    constant: dict[str, float]


def overview_layout(curves: dict[str, tuple[list[int], list[float]]]) -> OverviewLayout:
    """Choose the panels for the logged curves. Single tokens: probabilities on a log axis (their mean log-probs are
    not repeated in other_metrics); sequences: log-probs, and the probability-unit curves are left out."""
    constant = {key: values[0] for key, (_, values) in curves.items() if is_constant(values)}
    changing = {key: curve for key, curve in curves.items() if key not in constant}
    single_tokens = uses_probabilities(changing)
    candidates = ([PROBABILITY_PANEL, *OVERVIEW_PANELS] if single_tokens else
                  [LOGPROB_PANEL, *(panel for panel in OVERVIEW_PANELS if panel is not LARGEST_DECREASE_PANEL)])
    panels = [panel for panel in candidates if any(matching_keys(changing, series.name) for series in panel.series)]
    splits = [split for split in ("train", "test")
              if f"eval_metrics/{split}/preferred_logprobs_change_median" in changing]
    shown = {key for panel in panels for series in panel.series for key, _ in matching_keys(changing, series.name)}
    shown |= {key for name in PROBABILITY_NAMES + LOGPROB_NAMES for key, _ in matching_keys(changing, name)}
    for split in splits:
        for side in ("preferred", "dispreferred"):
            prefix = f"eval_metrics/{split}/{side}_logprobs_change_"
            shown |= {prefix + stat for stat in ("median", "mean", *(q for band in QUANTILE_BANDS for q in band[:2]))}
    return OverviewLayout(panels, splits, sorted(key for key in changing if key not in shown), constant)


def plot_run_overview(metrics_path: Path, plots_dir: Path, title: str = "") -> list[Path]:
    """Write overview.png and other_metrics.png (see the module docstring) for one run; returns the paths."""
    curves = load_curves(metrics_path)
    if not curves:
        return []
    plt = _pyplot()
    layout = overview_layout(curves)
    changing = {key: curve for key, curve in curves.items() if key not in layout.constant}
    plots_dir.mkdir(parents=True, exist_ok=True)
    count = len(layout.panels) + len(layout.distribution_splits)
    figure, axes = _grid(plt, max(count, 1), 3, 4.6, 3.3)
    for axis, panel in zip(axes, layout.panels):
        draw_panel(axis, panel, changing)
    for axis, split in zip(axes[len(layout.panels):], layout.distribution_splits):
        draw_change_distribution(axis, changing, split)
    for axis in axes[count:]:
        axis.set_visible(False)
    note = ", ".join(f"{key.replace('displacement/', '')}={value:.4g}"
                     for key, value in sorted(layout.constant.items()))
    figure.suptitle(title or Path(metrics_path).parent.name, fontsize=10)
    lines = textwrap.wrap(f"constant: {note}", width=int(figure.get_figwidth() * 16)) if note else []
    if lines:
        figure.text(0.01, 0.005, "\n".join(lines), fontsize=7)
    height = figure.get_figheight()  # margins in inches: x labels + the note below, the title above
    figure.subplots_adjust(left=0.07, right=0.98, bottom=(0.6 + 0.12 * len(lines)) / height, top=1 - 0.75 / height,
                           wspace=0.3, hspace=0.5)
    written = [plots_dir / OVERVIEW_FILE]
    figure.savefig(written[0], dpi=80)
    plt.close(figure)
    if layout.others:
        figure, axes = _grid(plt, len(layout.others), 4, 3.2, 2.3)
        for axis, key in zip(axes, layout.others):
            steps, values = changing[key]
            axis.plot(steps, values, marker="o" if len(steps) < MARKER_LIMIT else None, markersize=2)
            axis.set_title(key, fontsize=7)
            axis.tick_params(labelsize=6)
            axis.grid(alpha=0.3)
        for axis in axes[len(layout.others):]:
            axis.set_visible(False)
        figure.subplots_adjust(left=0.06, right=0.98, bottom=0.04, top=0.96, wspace=0.35, hspace=0.6)
        written.append(plots_dir / OTHER_FILE)
        figure.savefig(written[1], dpi=70)
        plt.close(figure)
    return written


def plot_mean_band(axis, trajectories: Sequence[tuple[Sequence[int], Sequence[float]]], *, color: str, label: str,
                   exponentiate: bool = False) -> int:
    """Mean over trajectories (one per seed) at the steps they all share, and a band of ± 1 population std.

    With `exponentiate`, the trajectories are log-probs and the curve is exp(mean), the band exp(mean ± std):
    the geometric mean and its spread, which stay positive on a log axis. Returns the number of shared steps.
    Example: log-probs [-1, -3] at a step -> curve exp(-2), band exp(-3) .. exp(-1).
    """
    shared = sorted(set.intersection(*[set(steps) for steps, _ in trajectories])) if trajectories else []
    if not shared:
        return 0
    columns = [dict(zip(steps, values)) for steps, values in trajectories]
    means, stds = [], []
    for step in shared:
        values = [column[step] for column in columns]
        mean = sum(values) / len(values)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))
    low = [m - s for m, s in zip(means, stds)]
    high = [m + s for m, s in zip(means, stds)]
    if exponentiate:
        means, low, high = ([math.exp(v) for v in seq] for seq in (means, low, high))
    axis.plot(shared, means, color=color, label=f"{label} (mean of {len(trajectories)})")
    axis.fill_between(shared, low, high, color=color, alpha=0.2, linewidth=0)
    return len(shared)


def save_figure(figure, path: Path, dpi: int = 100, caption: str = "") -> Path:
    """tight_layout (leaving room for `caption`, wrapped to the figure's width, under the panels), write `path`
    (parents created),
    close the figure; returns `path`."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = textwrap.wrap(caption, width=int(figure.get_figwidth() * 17)) if caption else []
    if lines:
        figure.text(0.01, 0.01, "\n".join(lines), fontsize=7)
    figure.tight_layout(rect=(0, 0.012 + 0.1 * len(lines) / figure.get_figheight(), 1, 1))
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def new_figure(rows: int = 1, columns: int = 1, width: float = 6.0, height: float = 4.0):
    """(figure, flat list of axes) of a rows x columns grid, each axis `width` x `height` inches."""
    return _grid(_pyplot(), rows * columns, columns, width, height)
