"""The plan runner: validates a plan, then executes its runs (resume, chaining, failure isolation, parallel).

    python <family>_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run] [--rerun]
        [--set KEY=VALUE ...] [--only RUN ...]         (rules in common/cli_overrides.py)
    python <family>_experiment_plan_runner.py --list_fields

Every run writes `<outputs_dir>/<experiment_name>/`:
    .ld_run.json   ownership marker (plan, attempt id): only directories holding it are ever cleaned
    config.json    resolved config (incl. the seed actually used), written first
    status.json    {"status": running|done|failed|interrupted, seconds, the experiment's `timings`, `identity`
                   (input fingerprints, parents' completion stamps), `completion` stamp when done, error +
                   traceback on failure}
    metrics.jsonl  one JSON line per logged step, flushed as written
    summary.json   what the experiment returned, written atomically just before status becomes "done"
    run.log        the run's log records;  plots/  overview.png + other_metrics.png (save_metric_plots)
The plan writes `<outputs_dir>/<plan name>.plan.log` and `<plan name>.plan_status.json` (final table).
Resume: a run is reused ("cached") when it is done with the same config, the same input files and the same
parent runs (`common/run_state.py`); anything else is redone from a clean directory and the log says why
(`--rerun` redoes everything, and is the way to replace another plan's finished run). Each run is locked while
a process works on it; a second process waits. With num_parallel > 1 a worker that dies fails its run only.
Exit code: 0 all done, 1 some run failed, 2 invalid plan (or --executor ray without Ray), 130 Ctrl-C (the runs
in progress are recorded "interrupted").
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import logging
import os
import random
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.cli_overrides import (OverrideError, SelectionError, add_plan_selection_options, format_fields,
                                  load_selected_plan)
from common.config import ExperimentFamily, RunContext, config_to_dict
from common.distributed import launched_distributed, resolve_device
from common.io_utils import atomic_write_json
from common.metrics_logger import MetricsLogger
from common.plan import Plan, PlanError, RunSpec, sanitize_name
from common.run_console import configure_console_logging, format_dry_run, format_results_table
from common.run_state import (RunDirError, claim_run_dir, finished_state, mark_abandoned, run_identity, run_lock,
                              still_owned)
from common.worker_pool import IsolatedProcessPool, WorkerDiedError

log = logging.getLogger("ld.runner")
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


@dataclass
class RunResult:
    name: str
    status: str  # done | failed | skipped | cached | interrupted
    seconds: float
    run_dir: str
    error: str = ""
    redo_reason: str = ""  # why a run that had been started before was run again ("" = first run)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _NullMetricsLogger:
    """What non-main processes of a multi-process launch log through: nothing is written."""

    def log(self, step: int, **scalars: float) -> None:
        pass

    def close(self, save_plots: bool = False) -> list[Path]:
        return []


def launch_state():
    """accelerate's PartialState when started by torchrun / accelerate launch (WORLD_SIZE > 1), else None.

    Under such a launch every process runs the plan; only the main process prepares run directories and
    writes files, and the processes wait for each other around those writes."""
    if not launched_distributed():
        return None
    from accelerate import PartialState  # initialises the process group once; the trainer's Accelerator reuses it

    return PartialState(cpu=not torch.cuda.is_available())


def _from_main(state, value: Any) -> Any:
    """`value` as the main process has it, on every process of a multi-process launch (a sync point too)."""
    if state is None:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _log_to_run_dir(run_dir: Path, file_name: str) -> tuple[logging.Handler, Callable[[], None]]:
    """Send every log record (INFO and up) to `run_dir/file_name` too; returns the file's handler (for records
    meant for the file only) and the function that undoes it."""
    handler = logging.FileHandler(run_dir / file_name, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    return handler, undo


def execute_run(family: ExperimentFamily, spec: RunSpec, assigned_gpu: int | None,
                run_dirs_by_name: dict[str, Path], rerun: bool = False, plan_key: str = "") -> RunResult:
    """Run one experiment in this process and record its status. Never raises for a failing experiment.

    Under the run's lock (`common.run_state`): reuse the run if it finished with this config and these inputs
    (unless `rerun`); else claim the directory (only ours is ever cleaned), run, and write summary.json and
    then status "done" (with a new completion stamp) only while the directory is still this attempt's.
    Ctrl-C records status "interrupted" and re-raises KeyboardInterrupt."""
    started = time.time()
    state = launch_state()
    is_main = state is None or state.is_main_process
    attempt = ""
    with contextlib.ExitStack() as stack:
        if is_main:
            stack.enter_context(run_lock(spec.run_dir))
        if state is not None:
            state.wait_for_everyone()  # the main process holds the lock before anyone reads the old status
        identity = run_identity(spec.config, spec.references)
        # the main process's decision holds for all; every process has read the old status before it cleans up
        already_done, redo_reason = _from_main(state, finished_state(spec.run_dir, spec.config, identity))
        if already_done and not rerun:
            return RunResult(spec.name, "cached", 0.0, str(spec.run_dir))
        redo_reason = "--rerun" if already_done else redo_reason
        status = {"status": "running", "started_at": started, "overrides": spec.overrides, "identity": identity,
                  "redo_reason": redo_reason, "pid": os.getpid()}
        refusal = None
        if is_main:
            try:
                attempt = claim_run_dir(spec.run_dir, spec.name, plan_key, replace_finished=rerun)
                atomic_write_json(spec.run_dir / "config.json", config_to_dict(spec.config))
                atomic_write_json(spec.run_dir / "status.json", status)
            except RunDirError as error:
                refusal = str(error)
        refusal = _from_main(state, refusal)  # the other processes wait until the directory is ready (or refused)
        if refusal:
            log.error("run %s: %s", spec.name, refusal)
            return RunResult(spec.name, "failed", 0.0, str(spec.run_dir), refusal, redo_reason)
        run_log, undo_logging = _log_to_run_dir(spec.run_dir,
                                                "run.log" if is_main else f"run.rank{state.process_index}.log")
        metrics_logger = None
        try:
            config = spec.config
            seed_everything(config.random_seed)
            device = resolve_device(config.device, assigned_gpu)
            log.info("run %s on %s, seed %d (%s), config in %s", spec.name, device, config.random_seed,
                     f"redone: {redo_reason}" if redo_reason else "first run", spec.run_dir / "config.json")
            run_log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "run %s config %s",
                                        (spec.name, config_to_dict(config)), None))  # run.log only
            metrics_logger = _NullMetricsLogger() if not is_main else MetricsLogger(
                spec.run_dir, use_wandb=config.use_wandb, wandb_project=config.wandb_project,
                wandb_run_name=spec.name, wandb_config=config_to_dict(config))
            context = RunContext(spec.run_dir, device, metrics_logger, config.random_seed, run_dirs_by_name)
            summary = family.run(config, context)  # writes model/, tensors, ... before it returns
            metrics_logger.close(save_plots=config.save_metric_plots)
            if is_main:
                atomic_write_json(spec.run_dir / "summary.json", summary)
                if not still_owned(spec.run_dir, attempt):
                    raise RunDirError(f"{spec.run_dir} was cleaned or taken over by another process during the run")
            status.update(status="done", finished_at=time.time(), seconds=time.time() - started,
                          timings=context.timings, completion=uuid.uuid4().hex)
            result = RunResult(spec.name, "done", time.time() - started, str(spec.run_dir), "", redo_reason)
        except KeyboardInterrupt:
            if metrics_logger is not None:
                metrics_logger.close(save_plots=False)
            status.update(status="interrupted", finished_at=time.time(), seconds=time.time() - started,
                          error="interrupted (Ctrl-C)")
            if is_main and still_owned(spec.run_dir, attempt):
                atomic_write_json(spec.run_dir / "status.json", status)
            raise
        except Exception as err:  # one failing run must not stop the plan
            if metrics_logger is not None:
                metrics_logger.close(save_plots=False)
            log.error("run %s failed: %s", spec.name, err, exc_info=True)
            status.update(status="failed", finished_at=time.time(), seconds=time.time() - started,
                          error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            result = RunResult(spec.name, "failed", time.time() - started, str(spec.run_dir), status["error"],
                               redo_reason)
        finally:
            undo_logging()
        if is_main and still_owned(spec.run_dir, attempt):
            atomic_write_json(spec.run_dir / "status.json", status)
        return result


class InlineExecutor(futures.Executor):
    """Runs each submitted call immediately in this process (the sequential executor)."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> futures.Future:
        future: futures.Future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - forwarded to the caller through the future
            future.set_exception(err)
        return future


def make_executor(plan: Plan, executor_name: str, ray_address: str | None) -> futures.Executor:
    """The executor that runs the plan's runs: inline (sequential), isolated worker processes, or Ray."""
    if executor_name == "ray":
        from common.ray_executor import RayExecutor  # optional dependency, imported only when asked for

        return RayExecutor(address=ray_address)
    if plan.num_parallel > 1:
        return IsolatedProcessPool()
    return InlineExecutor()


def plan_key(plan: Plan) -> str:
    """Identity of a plan in run markers: its resolved file path."""
    return str(Path(plan.path).resolve())


class PlanInterrupted(KeyboardInterrupt):
    """Ctrl-C during a plan; `runs` are the runs that were in progress (recorded "interrupted")."""

    def __init__(self, runs: list[str]) -> None:
        super().__init__(runs)
        self.runs = runs


def _result_of(future: futures.Future, spec: RunSpec) -> RunResult:
    """The run's result; a worker that died (kill -9, out of memory) fails its run, recorded in status.json."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except Exception as err:
        error = f"worker died: {err}" if isinstance(err, WorkerDiedError) else f"{type(err).__name__}: {err}"
        mark_abandoned(spec.run_dir, "failed", error)
        return RunResult(spec.name, "failed", 0.0, str(spec.run_dir), error)


def run_plan(plan: Plan, family: ExperimentFamily, *, rerun: bool = False, executor_name: str = "local",
             ray_address: str | None = None) -> list[RunResult]:
    """Execute the plan's runs in dependency order; dependents of a failed run are skipped.

    Raises PlanInterrupted on Ctrl-C after the runs in progress have been recorded "interrupted"."""
    run_dirs = {spec.name: spec.run_dir for spec in plan.runs}
    results: dict[str, RunResult] = {}
    free_gpus = list(plan.gpu_ids_pool) if torch.cuda.is_available() else []
    pending = list(plan.runs)
    running: dict[futures.Future, tuple[RunSpec, int | None]] = {}
    executor = make_executor(plan, executor_name, ray_address)
    slots = plan.num_parallel if executor_name == "local" else max(plan.num_parallel, len(plan.runs))
    # logging_redirect_tqdm: console log lines print above the progress bars instead of through them
    with executor, logging_redirect_tqdm(), \
            tqdm(total=len(plan.runs), desc=f"plan {plan.name}", unit="run") as progress:
        try:
            while pending or running:
                for spec in list(pending):
                    failed_dependency = next((d for d in spec.depends_on if d in results
                                              and results[d].status not in ("done", "cached")), None)
                    if failed_dependency:
                        pending.remove(spec)
                        results[spec.name] = RunResult(spec.name, "skipped", 0.0, str(spec.run_dir),
                                                       f"dependency '{failed_dependency}' did not finish")
                        progress.update(1)
                    elif all(d in results for d in spec.depends_on) and len(running) < slots:
                        pending.remove(spec)
                        gpu = free_gpus.pop(0) if free_gpus else None
                        future = executor.submit(execute_run, family, spec, gpu, run_dirs, rerun, plan_key(plan))
                        running[future] = (spec, gpu)
                if not running:
                    continue
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    spec, gpu = running[future]
                    results[spec.name] = _result_of(future, spec)
                    del running[future]
                    if gpu is not None:
                        free_gpus.append(gpu)
                    if results[spec.name].redo_reason:
                        log.info("run %s was redone: %s", spec.name, results[spec.name].redo_reason)
                    progress.set_postfix_str(f"{spec.name}: {results[spec.name].status}")
                    progress.update(1)
        except KeyboardInterrupt:
            executor.shutdown(wait=False, cancel_futures=True)
            for spec, _ in running.values():
                mark_abandoned(spec.run_dir, "interrupted", "interrupted (Ctrl-C)")
            raise PlanInterrupted([spec.name for spec, _ in running.values()]) from None
    return [results[spec.name] for spec in plan.runs]


def main(family: ExperimentFamily, argv: list[str] | None = None) -> int:
    """Command-line entry point shared by every `*_experiment_plan_runner.py`. Returns the exit code."""
    parser = argparse.ArgumentParser(description=f"Run a {family.name} experiment plan.")
    parser.add_argument("--plan_config_path", type=Path, help="JSON plan file (required unless --list_fields)")
    parser.add_argument("--dry_run", action="store_true", help="print the expanded runs and exit")
    parser.add_argument("--rerun", action="store_true", help="redo runs that are already done")
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="where runs execute")
    parser.add_argument("--ray_address", default=None, help="Ray cluster address (default: start a local one)")
    add_plan_selection_options(parser)
    args = parser.parse_args(argv)
    if args.list_fields:
        print(format_fields(family.name, family.config_cls))
        return 0
    if args.plan_config_path is None:
        print("error: --plan_config_path is required (or pass --list_fields to see the config fields)",
              file=sys.stderr)
        return 2
    configure_console_logging()
    logging.getLogger("ld").setLevel(logging.INFO)  # the plan log gets why runs are redone, whatever the root level
    try:
        plan = load_selected_plan(args.plan_config_path, family.config_cls, args.assignments, args.only)
    except (OverrideError, SelectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PlanError as err:
        print(f"error: invalid plan {args.plan_config_path} ({len(err.problems)} problem(s)); fix each and rerun:\n"
              + "\n".join(f"  - {problem}" for problem in err.problems), file=sys.stderr)
        return 2
    if plan.ignored_legacy_fields:
        print(f"note: reference-plan fields without effect here, ignored: {', '.join(plan.ignored_legacy_fields)}",
              file=sys.stderr)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        print(format_dry_run(plan))
        return 0
    state = launch_state()
    if state is not None and not state.is_main_process:  # the other processes of a torchrun launch
        results = run_plan(plan, family, rerun=args.rerun)
        return 0 if all(r.status in ("done", "cached") for r in results) else 1
    if args.executor == "ray":
        from common.ray_executor import ray_missing_message

        if ray_missing_message():  # before anything is written
            print(f"error: {ray_missing_message()}", file=sys.stderr)
            return 2
    outputs_dir = plan.runs[0].run_dir.parent if plan.runs else Path(".")
    outputs_dir.mkdir(parents=True, exist_ok=True)
    plan_stem = sanitize_name(plan.name)
    handler = logging.FileHandler(outputs_dir / f"{plan_stem}.plan.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    log.info("plan %s (%s): %d run(s)\n%s", plan.name, args.plan_config_path, len(plan.runs), format_dry_run(plan))
    try:
        results = run_plan(plan, family, rerun=args.rerun, executor_name=args.executor, ray_address=args.ray_address)
    except PlanInterrupted as interrupted:
        log.warning("plan interrupted (Ctrl-C); run(s) %s recorded as interrupted", interrupted.runs)
        print(f"error: interrupted (Ctrl-C); run(s) {', '.join(interrupted.runs) or '-'} recorded as 'interrupted' "
              "(finished runs are kept); run the plan again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    table = format_results_table(results)
    print(table)
    with open(outputs_dir / f"{plan_stem}.plan.log", "a", encoding="utf-8") as plan_log:
        plan_log.write(table + "\n")
    atomic_write_json(outputs_dir / f"{plan_stem}.plan_status.json",
                      {"plan": str(args.plan_config_path), "runs": [vars(r) for r in results]})
    failed = [r for r in results if r.status == "failed"]
    if failed:
        first_line = (failed[0].error or "no message").splitlines()[0][:300]
        print(f"error: {len(failed)} run(s) failed, first {failed[0].name}: {first_line} "
              f"(traceback in {failed[0].run_dir}/run.log)", file=sys.stderr)
    return 0 if all(r.status in ("done", "cached") for r in results) else 1
