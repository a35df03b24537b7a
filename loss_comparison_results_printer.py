"""Table of loss x (runs, fraction displaced, log-prob changes, largest preferred-probability decrease, gradient
cosine) over finished persona and/or dataset-level runs.

Usage: python loss_comparison_results_printer.py --experiments_dir DIR [DIR ...] [--output_dir DIR]

Reads only status.json, config.json and summary.json of the run directories under each DIR (incomplete runs are
skipped with a note); statistics in common/loss_comparison.py, columns in docs/loss_comparison.md. Prints the
markdown table and writes `loss_comparison_results.json`, `loss_comparison.md` and `loss_comparison.png` (per
section: bars of the mean Δ log π(y+) ± std over runs and of Δ log π(y−) per loss row, "k/n runs displaced" under
them, and bars of the mean gradient cosine; docs/plots.md) into --output_dir (default: the first DIR).
Exit code 0 on success, 2 if a DIR is missing or no finished run is found.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.io_utils import atomic_write_json, atomic_write_text, finished_runs_or_none
from common.loss_comparison import aggregate, format_markdown, run_metrics
from common.plots import DISPREFERRED_COLOR, PREFERRED_COLOR, new_figure, save_figure

RESULTS_FILE = "loss_comparison_results.json"
TABLE_FILE = "loss_comparison.md"
PLOT_FILE = "loss_comparison.png"


def plot_sections(sections: list[dict], path: Path) -> Path:
    """One row of two panels per section (see the module docstring); rows without a gradient cosine get none."""
    figure, axes = new_figure(len(sections), 2, 6.0, 3.8)
    for index, section in enumerate(sections):
        change, cosine = axes[2 * index], axes[2 * index + 1]
        rows = section["rows"]
        labels = [f"{row['objective']}\n{row['setting']}" for row in rows]
        positions = range(len(rows))
        change.bar([p - 0.2 for p in positions], [row["preferred_logprob_change_mean"] for row in rows], 0.4,
                   yerr=[row["preferred_logprob_change_std"] for row in rows], capsize=3, color=PREFERRED_COLOR,
                   label="Δ log π(y+) (mean ± std over runs)")
        change.bar([p + 0.2 for p in positions], [row["dispreferred_logprob_change_mean"] or 0.0 for row in rows],
                   0.4, color=DISPREFERRED_COLOR, alpha=0.7, label="Δ log π(y−) (mean over runs)")
        change.axhline(0.0, color="grey", linewidth=0.7)
        change.set_xticks(list(positions), [f"{label}\n{row['num_displaced']}/{row['num_runs']} runs displaced"
                                            for label, row in zip(labels, rows)], fontsize=7)
        change.set_ylabel("Δ log π, initial → final (nats)")
        change.set_title(f"{section['model']} — {section['kind']}", fontsize=9)
        change.legend(fontsize=7, loc="best")
        change.grid(axis="y", alpha=0.3)
        measured = [(p, row["grad_cosine_mean"]) for p, row in zip(positions, rows)
                    if row["grad_cosine_mean"] is not None]
        cosine.bar([p for p, _ in measured], [value for _, value in measured], 0.5, color="purple")
        for position, row in zip(positions, rows):
            if row["grad_cosine_mean"] is None:
                cosine.annotate("not measured", (position, 0.5), xycoords=("data", "axes fraction"), ha="center",
                                fontsize=7, color="grey")
        cosine.axhline(0.0, color="grey", linewidth=0.7)
        cosine.set_xticks(list(positions), labels, fontsize=7)
        cosine.set_xlim(-0.6, len(rows) - 0.4)
        cosine.set_ylabel("cosine(∇log π(y+), ∇log π(y−))")
        cosine.set_title("gradient entanglement (mean over diagnosed steps and runs)", fontsize=9)
        cosine.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare preference losses over finished runs.")
    parser.add_argument("--experiments_dir", required=True, type=Path, nargs="+",
                        help="one or more plans' outputs_dir (searched recursively for run directories)")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help=f"where {RESULTS_FILE} and {TABLE_FILE} go (default: the first --experiments_dir)")
    args = parser.parse_args(argv)
    found = finished_runs_or_none(args.experiments_dir, run_metrics)
    if found is None:
        return 2
    runs, notes = found
    sections = aggregate(runs)
    table = format_markdown(sections)
    print(f"{len(runs)} finished run(s) under {' '.join(map(str, args.experiments_dir))}\n")
    print(table)
    output_dir = args.output_dir or args.experiments_dir[0]
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / RESULTS_FILE, {"experiments_dirs": [str(d) for d in args.experiments_dir],
                                                  "notes": notes, "sections": sections})
    atomic_write_text(output_dir / TABLE_FILE, table)
    plot_sections(sections, output_dir / PLOT_FILE)
    print(f"wrote {output_dir / RESULTS_FILE}, {output_dir / TABLE_FILE} and {output_dir / PLOT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
