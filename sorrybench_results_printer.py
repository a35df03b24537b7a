"""Refusal rates of finished SORRY-Bench runs: a table and bars per variant, initial vs after training, train/test.

Usage: python sorrybench_results_printer.py --experiments_dir OUTPUTS_DIR [--output_dir DIR] [--confidence 0.95]

Reads status.json, config.json and summary.json of the SORRY-Bench run directories under OUTPUTS_DIR (written by
sorrybench_experiment_plan_runner.py): `refusal_counts[_initial]/<split>` = [responses labelled refusal, responses]
for split train, test (and train_subset, the prompts trained on). Runs are grouped by (model, variant); a variant
is the loss plus the choices of sorrybench/experiment.py (+SFT, gold preferences, CHES-filtered) and lr. Counts
of a variant's runs (seeds) are pooled: rate = sum refusals / sum responses, with a Wilson score interval
(scipy.stats.binomtest(...).proportion_ci(method="wilson"), default 95 %). Writes into --output_dir (default
OUTPUTS_DIR): sorrybench_results.json, sorrybench_refusal_rates.md and sorrybench_refusal_rates.png (bars with the
intervals as error bars; docs/plots.md). Exit code 0 on success, 2 if the directory is missing, holds no finished
SORRY-Bench run, or holds runs of another family only.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from common.io_utils import FinishedRun, atomic_write_json, atomic_write_text, finished_runs_or_none
from common.plots import new_figure, save_figure
from common.run_family import family_of_config

RESULTS_FILE, TABLE_FILE, PLOT_FILE = "sorrybench_results.json", "sorrybench_refusal_rates.md", \
    "sorrybench_refusal_rates.png"
SPLITS = ("train", "test", "train_subset")
WHENS = (("initial", "refusal_counts_initial/"), ("trained", "refusal_counts/"))


def wilson_interval(refusals: int, responses: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy.stats.binomtest). Example: 8 of 10 at 95 % ->
    (0.4902, 0.9433): centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)."""
    from scipy.stats import binomtest

    interval = binomtest(refusals, responses).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def variant_label(config: dict) -> str:
    """E.g. 'dpo +SFT(1) lr=0.001', 'ipo CHES-filtered(ln_ches_scores, k=2) lr=0.001', 'dpo gold lr=5e-06'."""
    parts = [str(config.get("objective"))]
    if config.get("sft_coeff"):
        parts.append(f"+SFT({config['sft_coeff']:g})")
    if config.get("use_gold_preferences"):
        parts.append("gold")
    if config.get("similarity_results_path"):
        measure, k = config.get("pref_similarity_measure"), config.get("preference_num_samples")
        parts.append(f"CHES-filtered({measure}, k={k})")
    if config.get("lr") is not None:
        parts.append(f"lr={config['lr']:g}")
    return " ".join(parts)


def sorrybench_run(run: FinishedRun) -> tuple[Path, dict, dict] | str:
    """(run dir, config, summary) of a finished SORRY-Bench run with refusal counts, or a note saying why it is
    skipped. Counts of the wrong shape raise (the shared discovery then skips the run with a note)."""
    if family_of_config(run.config) != "sorrybench":
        return f"skipping {run.run_dir}: not a SORRY-Bench run (config.json has no refusal_judge)"
    counts = {key: value for key, value in run.summary.items() if key.startswith(("refusal_counts/",
                                                                                  "refusal_counts_initial/"))}
    if not any(key.startswith("refusal_counts/") for key in counts):
        return f"skipping {run.run_dir}: summary.json has no refusal_counts/ (run with refusal_eval false)"
    for key, (refusals, responses) in counts.items():
        if not 0 <= int(refusals) <= int(responses):
            raise ValueError(f"{key} = {[refusals, responses]}, expected [refusals, responses] with 0 <= k <= n")
    return run.run_dir, run.config, run.summary


def aggregate(runs: list[tuple[Path, dict, dict]], confidence: float = 0.95) -> list[dict]:
    """One row per (model, variant): pooled counts, rate and Wilson interval per (initial|trained, split).

    Row: {"model", "variant", "num_runs", "run_dirs", "rates": {"<when>/<split>": {"refusals", "responses",
    "rate", "low", "high", "num_runs"}}}; a (when, split) no run measured is absent."""
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = defaultdict(list)
    for run_dir, config, summary in runs:
        groups[(str(config.get("model")), variant_label(config))].append((run_dir, summary))
    rows = []
    for (model, variant), members in sorted(groups.items()):
        rates = {}
        for when, prefix in WHENS:
            for split in SPLITS:
                counts = [summary[prefix + split] for _, summary in members if prefix + split in summary]
                refusals, responses = sum(c[0] for c in counts), sum(c[1] for c in counts)
                if responses:
                    low, high = wilson_interval(refusals, responses, confidence)
                    rates[f"{when}/{split}"] = {"refusals": refusals, "responses": responses,
                                                "rate": refusals / responses, "low": low, "high": high,
                                                "num_runs": len(counts)}
        rows.append({"model": model, "variant": variant, "num_runs": len(members),
                     "run_dirs": [str(run_dir) for run_dir, _ in members], "rates": rates})
    return rows


def format_markdown(rows: list[dict], confidence: float) -> str:
    """Table: one line per (model, variant), a 'rate [low, high] (k/n)' cell per (when, split)."""
    columns = [f"{when}/{split}" for when, _ in WHENS for split in SPLITS]
    lines = [f"refusal rate = refusals / responses pooled over the variant's runs, [Wilson {confidence:.0%} interval]",
             "", "| model | variant | runs | " + " | ".join(columns) + " |", "|---|---|---:|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            entry = row["rates"].get(column)
            cells.append("—" if entry is None else f"{entry['rate']:.1%} [{entry['low']:.1%}, {entry['high']:.1%}] "
                                                   f"({entry['refusals']}/{entry['responses']})")
        lines.append(f"| {row['model']} | {row['variant']} | {row['num_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_refusal_rates(rows: list[dict], path: Path, confidence: float) -> Path:
    """Bars per variant: train and test, initial (hatched, light) and after training, Wilson error bars."""
    bars = [(when, split) for split in ("train", "test") for when, _ in WHENS]
    width = 0.8 / len(bars)
    figure, axes = new_figure(1, 1, max(6.0, 1.6 * len(rows) + 2), 4.4)
    axis = axes[0]
    for index, (when, split) in enumerate(bars):
        xs, heights, errors = [], [], ([], [])
        for position, row in enumerate(rows):
            entry = row["rates"].get(f"{when}/{split}")
            if entry is None:
                continue
            xs.append(position + (index - (len(bars) - 1) / 2) * width)
            heights.append(entry["rate"])
            errors[0].append(entry["rate"] - entry["low"])
            errors[1].append(entry["high"] - entry["rate"])
        if not xs:
            continue
        color = "tab:blue" if split == "train" else "tab:orange"
        axis.bar(xs, heights, width, yerr=errors, capsize=3, color=color, alpha=0.35 if when == "initial" else 0.9,
                 hatch="//" if when == "initial" else None, edgecolor=color,
                 label=f"{split}, {'before' if when == 'initial' else 'after'} training")
    axis.set_xticks(range(len(rows)), [f"{row['variant']}\n({row['num_runs']} run(s))" for row in rows], fontsize=7)
    axis.set_ylim(0, 1.3)  # room for the legend above the bars
    axis.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axis.set_ylabel("refusal rate (refusals / responses)")
    models = sorted({row["model"] for row in rows})
    axis.set_title(f"SORRY-Bench refusal rate — {', '.join(models)}", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=2, loc="upper center")
    caption = (f"error bars: Wilson score {confidence:.0%} interval of the pooled binomial proportion "
               "(scipy.stats.binomtest); counts pooled over the runs (seeds) of a variant")
    return save_figure(figure, path, caption=caption)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise SORRY-Bench refusal rates of finished runs.")
    parser.add_argument("--experiments_dir", required=True, type=Path, help="the plan's outputs_dir")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where the outputs go (default: --experiments_dir)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    args = parser.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        print(f"error: --confidence must be in (0, 1), e.g. 0.95; got {args.confidence}", file=sys.stderr)
        return 2
    found = finished_runs_or_none([args.experiments_dir], sorrybench_run, families=("sorrybench",))
    if found is None:
        return 2
    runs, notes = found
    rows = aggregate(runs, args.confidence)
    table = format_markdown(rows, args.confidence)
    print(f"{len(runs)} finished SORRY-Bench run(s) under {args.experiments_dir}\n")
    print(table)
    output_dir = args.output_dir or args.experiments_dir
    atomic_write_json(output_dir / RESULTS_FILE, {"experiments_dir": str(args.experiments_dir), "notes": notes,
                                                  "confidence": args.confidence, "interval": "wilson", "rows": rows})
    atomic_write_text(output_dir / TABLE_FILE, table + "\n")
    plot_refusal_rates(rows, output_dir / PLOT_FILE, args.confidence)
    print(f"wrote {output_dir / RESULTS_FILE}, {output_dir / TABLE_FILE} and {output_dir / PLOT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
