"""Table of loss x (runs, fraction displaced, log-prob changes, largest preferred-probability decrease, gradient
cosine) over finished persona and/or dataset-level runs.

Usage: python loss_comparison_results_printer.py --experiments_dir DIR [DIR ...] [--output_dir DIR]

Reads only status.json, config.json and summary.json of the run directories under each DIR (incomplete runs are
skipped with a note); statistics in common/loss_comparison.py, columns in docs/loss_comparison.md. Prints the
markdown table and writes `loss_comparison_results.json` and `loss_comparison.md` into --output_dir (default: the
first DIR). Exit code 0 on success, 2 if a DIR is missing or no finished run is found.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.io_utils import atomic_write_json, atomic_write_text, finished_runs_or_none
from common.loss_comparison import aggregate, format_markdown, run_metrics

RESULTS_FILE = "loss_comparison_results.json"
TABLE_FILE = "loss_comparison.md"


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
    print(f"wrote {output_dir / RESULTS_FILE} and {output_dir / TABLE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
