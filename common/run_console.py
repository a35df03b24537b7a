"""What the plan runner prints: the final results table, the dry-run listing and one-line console logging."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: the runner imports this module
    from common.plan import Plan
    from common.runner import RunResult


def format_results_table(results: list[RunResult]) -> str:
    """Fixed-width table: run, status, seconds, directory, error."""
    width = max([len(r.name) for r in results] + [3])
    lines = [f"{'run':<{width}}  {'status':<8}  {'seconds':>8}  directory"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<8}  {r.seconds:>8.1f}  {r.run_dir}"
                     + (f"  ({r.error.splitlines()[0][:120]})" if r.error else ""))
    return "\n".join(lines)


def format_dry_run(plan: Plan) -> str:
    lines = [f"plan '{plan.name}': {len(plan.runs)} run(s)"]
    for spec in plan.runs:
        lines.append(f"- {spec.name}  dir={spec.run_dir}  seed={spec.config.random_seed}  overrides={spec.overrides}"
                     + (f"  after={list(spec.depends_on)}" if spec.depends_on else ""))
    return "\n".join(lines)


class _ConsoleFormatter(logging.Formatter):
    """Console log lines without tracebacks: a failed run shows one line; its traceback is in its run.log."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info:
            return super().format(record)
        quiet = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(quiet) + " (traceback in the run's run.log and status.json)"


def configure_console_logging() -> None:
    """INFO logging on the console, without tracebacks (those go to run.log and status.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for console in logging.getLogger().handlers:
        if type(console) is logging.StreamHandler:
            console.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
