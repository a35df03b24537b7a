"""Print the displacement table of a callback run directory (reads JSON only; no torch import).

    python -m integrations.print_displacement outputs/trl_dpo_with_displacement_tracking/displacement

In: a directory written by `integrations.DisplacementCallback` (`config.json`, `metrics.jsonl`, `summary.json`).
Out: one line per measurement (step, mean log pi(y+|x) and log pi(y-|x), their change since step 0, fraction of
probe pairs displaced, largest decrease of pi(y+|x) so far), then the run's probe size and measured steps.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

PREFIX = "probe/"
TABLE_COLUMNS = (("step", "step"), ("displacement/preferred_logprob_mean", "logp(y+)"),
                 ("displacement/dispreferred_logprob_mean", "logp(y-)"),
                 ("displacement/preferred_logprob_change_mean", "d logp(y+)"),
                 ("displacement/dispreferred_logprob_change_mean", "d logp(y-)"),
                 ("displacement/frac_preferred_fell_since_init", "displaced"),
                 ("displacement/largest_preferred_prob_decrease_mean", "max drop p(y+)"))


def format_displacement_table(records: Sequence[dict], prefix: str = PREFIX) -> str:
    """A fixed-width text table of measurement records (as in `metrics.jsonl` / `callback.records`)."""
    lines = [" ".join(f"{title:>14}" for _, title in TABLE_COLUMNS)]
    for record in records:
        cells = [f"{record['step']:>14d}"]
        cells += [f"{record.get(prefix + key, math.nan):>14.4f}" for key, _ in TABLE_COLUMNS[1:]]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """(config.json, metrics.jsonl records) of a callback run directory.

    Raises:
        ValueError: the directory lacks `config.json` / `metrics.jsonl`, or is not a callback run (no `callback`
            entry in config.json).
    """
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise ValueError(f"{run_dir}: expected config.json and metrics.jsonl written by the displacement callback "
                         f"(its output_dir, default <training output_dir>/displacement)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "callback" not in config:
        raise ValueError(f"{config_path}: not a displacement-callback run (no `callback` entry); for plan runs use "
                         f"the family's results printer")
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return config, records


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("error: usage: python -m integrations.print_displacement RUN_DIR", file=sys.stderr)
        return 2
    try:
        config, records = read_run(argv[0])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_displacement_table(records))
    print(f"{config['callback']['num_probe_pairs']} probe pairs, {config['trainer']}, model {config['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
