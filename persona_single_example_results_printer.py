"""Summarise persona single-token runs: a table per setting, results.json and a PNG of probability trajectories.

Usage: python persona_single_example_results_printer.py --experiments_dir OUTPUTS_DIR [--keep_unstable]
                                                         [--max_step 100] [--output_dir DIR] [--plot PNG]

Reads config.json, status.json, summary.json, metrics.jsonl, top_tokens.jsonl and tensors.safetensors of the runs
under OUTPUTS_DIR; prints our statistics and, next to them, the reference printer's (its definitions, max_step);
see persona_experiments/results.py, reference_statistics.py and docs/persona.md.
The figure (--plot, default OUTPUT_DIR/trajectories.png): per setting, π(y+) and π(y−) over steps on a log axis,
mean over seeds with a ± 1 std band (docs/plots.md).
Exit code 0 on success, 2 if OUTPUTS_DIR is missing, holds no runs or only runs of another family, or --max_step < 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.io_utils import atomic_write_json, finished_runs_or_none
from persona_experiments.reference_statistics import REFERENCE_MAX_STEP
from persona_experiments.results import checked_run, format_table, plot_trajectories, summarize_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise persona single-token experiment runs.")
    parser.add_argument("--experiments_dir", required=True, type=Path, help="the plan's outputs_dir")
    parser.add_argument("--keep_unstable", action="store_true",
                        help="include runs whose loss increased between consecutive tracked steps")
    parser.add_argument("--max_step", type=int, default=REFERENCE_MAX_STEP,
                        help="last step the reference-definition statistics look at (the reference printer: 100)")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where results.json and trajectories.png go (default: --experiments_dir)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="the trajectories figure (PNG; default: OUTPUT_DIR/trajectories.png)")
    args = parser.parse_args(argv)
    if args.max_step < 1:
        print(f"error: --max_step must be >= 1 (the reference printer uses 100), got {args.max_step}", file=sys.stderr)
        return 2
    found = finished_runs_or_none([args.experiments_dir], checked_run, families=("persona",))
    if found is None:
        return 2
    runs, notes = found
    results = summarize_runs(runs, args.keep_unstable, args.max_step)
    print(f"{len(runs)} finished run(s) in {len(results)} setting(s) under {args.experiments_dir}"
          + ("" if args.keep_unstable else " (runs whose loss increased are excluded; --keep_unstable keeps them)"))
    print(format_table(results))
    output_dir = args.output_dir or args.experiments_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "results.json", {"experiments_dir": str(args.experiments_dir),
                                                    "keep_unstable": args.keep_unstable, "max_step": args.max_step,
                                                    "notes": notes, "settings": results})
    png = plot_trajectories(runs, results, args.plot or output_dir / "trajectories.png")
    print(f"wrote {output_dir / 'results.json'} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
