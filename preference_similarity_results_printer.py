"""Figure-2 analogue: similarity quantile of the training subset vs mean preferred log-prob change.

    python preference_similarity_results_printer.py --outputs_dir outputs/preference_similarity_cpu \
        [--metric eval_metrics/train/preferred_logprobs_change_mean] [--save_dir DIR]

In:  the run directories under `--outputs_dir` (each with `config.json` and `summary.json`, as written by
     `preference_similarity_experiment_plan_runner.py`); runs without a similarity file, still running, or with
     files of the wrong shape are skipped and listed (`common.io_utils.finished_runs_or_none`). The per-example
     figure also reads the similarity file and `displacement_train.safetensors`. A directory holding only runs of
     another family (SORRY-Bench, persona) is refused (exit 2).
Out (in `--save_dir`, default `--outputs_dir`):
     similarity_quantiles.png   Figure 2: x = quantile; left y = mean over seeds of `--metric` (Δ log π(y+), nats),
                                right the dispreferred counterpart (Δ log π(y−)); error bars = std over seeds
                                (population), every seed a point, the model in the title
     similarity_examples.png    per similarity file and measure: a histogram of the measure over the file, the
                                trained pairs marked; per-example measure vs Δ log π(y+) of every run, with
                                Spearman's rank correlation (scipy.stats.spearmanr)
     similarity_examples.json   [{"similarity_file", "measure", "num_points", "spearman_rho", "spearman_p", "points"}]
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

from common.io_utils import FinishedRun, atomic_write_json, finished_runs_or_none
from preference_similarity.plots import figure_2, join_examples, similarity_examples

DEFAULT_METRIC = "eval_metrics/train/preferred_logprobs_change_mean"
FRACTION_METRIC = "eval_metrics/train/frac_preferred_logprobs_decreased"
OUTPUT_STEM = "similarity_quantiles"
EXAMPLES_STEM = "similarity_examples"


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


def dispreferred_metric(metric: str) -> str | None:
    """The dispreferred counterpart of a preferred metric key, None if there is none.
    Example: eval_metrics/train/preferred_logprobs_change_mean -> eval_metrics/train/dispreferred_logprobs_change_mean.
    """
    return metric.replace("/preferred_", "/dispreferred_") if "/preferred_" in metric else None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs_dir", required=True, type=Path, help="directory holding the run directories")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"summary.json key. Default {DEFAULT_METRIC}")
    parser.add_argument("--save_dir", type=Path, default=None, help="where to write the PNG/MD/JSON")
    args = parser.parse_args(argv)
    found = finished_runs_or_none([args.outputs_dir], lambda run: similarity_run(run, args.metric),
                                  families=("preference_similarity",), flag="--outputs_dir")
    if found is None:
        raise SystemExit(2)
    runs = found[0]
    rows = aggregate(runs, args.metric)
    save_dir = args.save_dir or args.outputs_dir
    save_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, args.metric)
    print(table)
    (save_dir / f"{OUTPUT_STEM}.md").write_text(table + "\n", encoding="utf-8")
    json_rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                 for row in rows]
    (save_dir / f"{OUTPUT_STEM}.json").write_text(json.dumps(json_rows, indent=2) + "\n", encoding="utf-8")
    other_metric = dispreferred_metric(args.metric)
    figure_2(rows, aggregate(runs, other_metric) if other_metric else [], save_dir / f"{OUTPUT_STEM}.png")
    print(f"wrote {save_dir / OUTPUT_STEM}.{{png,md,json}}")
    groups, notes = join_examples(runs)
    for note in notes:
        print(f"note: {note}")
    if groups:
        stats = similarity_examples(groups, save_dir / f"{EXAMPLES_STEM}.png")
        for entry in stats:
            print(f"{entry['measure']} vs Δ log π(y+) per training pair ({entry['similarity_file']}): Spearman rho "
                  f"{entry['spearman_rho']:.3f} (p {entry['spearman_p']:.3g}, n {entry['num_points']})")
        atomic_write_json(save_dir / f"{EXAMPLES_STEM}.json", stats)  # NaN (fewer than 3 points) -> null
        print(f"wrote {save_dir / EXAMPLES_STEM}.{{png,json}}")
    return rows


if __name__ == "__main__":
    main()
