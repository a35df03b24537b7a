"""Summarise persona single-token runs: a table per setting, results.json and a PNG of probability trajectories.

Usage: python persona_single_example_results_printer.py --experiments_dir OUTPUTS_DIR [--keep_unstable]
                                                         [--output_dir DIR]

Reads only JSON/JSONL files (config.json, status.json, summary.json, metrics.jsonl) of the runs under
OUTPUTS_DIR; see persona_experiments/results.py for the statistics and docs/persona.md for the output files.
Exit code 0 on success, 2 if OUTPUTS_DIR is missing or holds no runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.io_utils import atomic_write_json, finished_runs_or_none
from persona_experiments.results import checked_run, format_table, plot_trajectories, summarize_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise persona single-token experiment runs.")
    parser.add_argument("--experiments_dir", required=True, type=Path, help="the plan's outputs_dir")
    parser.add_argument("--keep_unstable", action="store_true",
                        help="include runs whose loss increased between consecutive tracked steps")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where results.json and trajectories.png go (default: --experiments_dir)")
    args = parser.parse_args(argv)
    found = finished_runs_or_none([args.experiments_dir], checked_run)
    if found is None:
        return 2
    runs, notes = found
    results = summarize_runs(runs, args.keep_unstable)
    print(f"{len(runs)} finished run(s) in {len(results)} setting(s) under {args.experiments_dir}"
          + ("" if args.keep_unstable else " (runs whose loss increased are excluded; --keep_unstable keeps them)"))
    print(format_table(results))
    output_dir = args.output_dir or args.experiments_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "results.json", {"experiments_dir": str(args.experiments_dir),
                                                    "keep_unstable": args.keep_unstable, "notes": notes,
                                                    "settings": results})
    png = plot_trajectories(runs, results, output_dir / "trajectories.png")
    print(f"wrote {output_dir / 'results.json'} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
