"""Figure-2 analogue: similarity quantile of the training subset vs mean preferred log-prob change.

    python preference_similarity_results_printer.py --outputs_dir outputs/preference_similarity_cpu \
        [--metric eval_metrics/train/preferred_logprobs_change_mean] [--save_dir DIR]

In:  the run directories under `--outputs_dir` (each with `config.json` and `summary.json`, as written by
     `preference_similarity_experiment_plan_runner.py`); runs without a similarity file, still running, or with
     files of the wrong shape are skipped and listed (`common.io_utils.finished_runs_or_none`). Reads JSON only.
Out (in `--save_dir`, default `--outputs_dir`):
     similarity_quantiles.png   one line per (model, objective, measure): x = quantile, y = mean over seeds of
                                `--metric`, error bars = std over seeds (population)
     similarity_quantiles.md    the same numbers as a table (also printed)
     similarity_quantiles.json  [{"model", "objective", "measure", "quantile", "num_runs", "mean", "std",
                                  "values", "frac_preferred_decreased_mean", "run_dirs"}, ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from common.io_utils import FinishedRun, finished_runs_or_none

DEFAULT_METRIC = "eval_metrics/train/preferred_logprobs_change_mean"
FRACTION_METRIC = "eval_metrics/train/frac_preferred_logprobs_decreased"
OUTPUT_STEM = "similarity_quantiles"


def similarity_run(run: FinishedRun, metric: str) -> tuple[Path, dict, dict] | str:
    """(run dir, config, summary) of a finished similarity-filtered run, or a note saying why it is skipped.
    A config/summary of the wrong shape raises (the shared discovery skips the run with a note)."""
    if not run.config.get("similarity_results_path"):
        return f"skipping {run.run_dir}: no similarity_results_path (not a similarity-filtered run)"
    if not isinstance(run.summary.get(metric), (int, float)):
        return f"skipping {run.run_dir}: summary.json has {metric} = {run.summary.get(metric)!r}, expected a number"
    entry = (run.run_dir, run.config, run.summary)
    format_table(aggregate([entry], metric), metric)  # the grouping fields must have usable types
    return entry


def aggregate(runs: list[tuple[Path, dict, dict]], metric: str) -> list[dict]:
    """One row per (model, objective, measure, quantile): mean and population std of `metric` over runs.

    `quantile` null (the lowest-k filter) is reported as quantile 0. Rows are sorted by series, then quantile.
    """
    groups: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for run_dir, config, summary in runs:
        if summary.get(metric) is None:
            continue
        quantile = config.get("quantile")
        key = (config.get("model"), config.get("objective"), config.get("pref_similarity_measure"),
               0.0 if quantile is None else float(quantile))
        groups[key].append((run_dir, summary))
    rows = []
    ordered = sorted(groups.items(), key=lambda item: (str(item[0][:3]), item[0][3]))
    for (model, objective, measure, quantile), members in ordered:
        values = [float(summary[metric]) for _, summary in members]
        fractions = [float(s[FRACTION_METRIC]) for _, s in members if s.get(FRACTION_METRIC) is not None]
        rows.append({
            "model": model, "objective": objective, "measure": measure, "quantile": quantile,
            "num_runs": len(values), "mean": statistics.fmean(values), "std": statistics.pstdev(values),
            "values": values,
            "frac_preferred_decreased_mean": statistics.fmean(fractions) if fractions else None,
            "run_dirs": [str(run_dir) for run_dir, _ in members],
        })
    return rows


def format_table(rows: list[dict], metric: str) -> str:
    """Markdown table of the aggregated rows."""
    lines = [f"metric: `{metric}` (mean ± std over runs)", "",
             "| model | objective | measure | quantile | runs | mean | std | frac preferred fell |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        fraction = row["frac_preferred_decreased_mean"]
        lines.append(f"| {row['model']} | {row['objective']} | {row['measure']} | {row['quantile']:.2f} | "
                     f"{row['num_runs']} | {row['mean']:.4f} | {row['std']:.4f} | "
                     f"{'' if fraction is None else f'{fraction:.3f}'} |")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, path: Path) -> None:
    """Quantile (x) vs mean metric (y) with std error bars, one line per (model, objective, measure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        series[(row["model"], row["objective"], row["measure"])].append(row)
    vary = [len({key[i] for key in series}) > 1 for i in range(3)]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        label = " / ".join(str(part) for part, show in zip(key, vary) if show) or str(key[2])
        axis.errorbar([p["quantile"] for p in points], [p["mean"] for p in points],
                      yerr=[p["std"] for p in points], marker="o", capsize=3, label=label)
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel("similarity quantile of the training subset")
    axis.set_ylabel(metric.split("/")[-1].replace("_", " "))
    axis.set_title(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs_dir", required=True, type=Path, help="directory holding the run directories")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"summary.json key. Default {DEFAULT_METRIC}")
    parser.add_argument("--save_dir", type=Path, default=None, help="where to write the PNG/MD/JSON")
    args = parser.parse_args(argv)
    found = finished_runs_or_none([args.outputs_dir], lambda run: similarity_run(run, args.metric))
    if found is None:
        raise SystemExit(2)
    rows = aggregate(found[0], args.metric)
    save_dir = args.save_dir or args.outputs_dir
    save_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, args.metric)
    print(table)
    (save_dir / f"{OUTPUT_STEM}.md").write_text(table + "\n", encoding="utf-8")
    json_rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                 for row in rows]
    (save_dir / f"{OUTPUT_STEM}.json").write_text(json.dumps(json_rows, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.metric, save_dir / f"{OUTPUT_STEM}.png")
    print(f"wrote {save_dir / OUTPUT_STEM}.{{png,md,json}}")
    return rows


if __name__ == "__main__":
    main()
