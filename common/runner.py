"""The plan runner: validates a plan, then executes its runs (resume, chaining, failure isolation, parallel).

    python <family>_experiment_plan_runner.py --plan_config_path PLAN.json [--dry_run] [--rerun]

Every run writes `<outputs_dir>/<experiment_name>/`:
    config.json    resolved config (incl. the seed actually used), written first
    status.json    {"status": pending|running|done|failed|skipped, seconds, the experiment's `timings`, error +
                   traceback on failure}
    metrics.jsonl  one JSON line per logged step, flushed as written
    summary.json   what the experiment returned, written atomically just before status becomes "done"
    run.log        the run's log records;  plots/  overview.png + other_metrics.png (save_metric_plots)
The plan writes `<outputs_dir>/<plan name>.plan.log` and `<plan name>.plan_status.json` (final table).
Resume: a run whose status is "done" with an identical config.json is skipped; anything else is redone from a
clean directory (`--rerun` redoes everything). Exit code: 0 all done, 1 some run failed, 2 invalid plan.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import logging
import multiprocessing
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from common.config import ExperimentFamily, RunContext, config_to_dict
from common.io_utils import atomic_write_json, read_json, to_jsonable
from common.metrics_logger import MetricsLogger
from common.plan import Plan, PlanError, RunSpec, load_plan, sanitize_name

log = logging.getLogger("ld.runner")
RUN_FILES = ("config.json", "status.json")  # a directory holding one of these is ours to clean


@dataclass
class RunResult:
    name: str
    status: str  # done | failed | skipped | cached
    seconds: float
    run_dir: str
    error: str = ""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(requested: str, assigned_gpu: int | None) -> torch.device:
    """'auto' -> the assigned GPU, else cuda:0 if CUDA is available, else CPU; anything else as given."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{assigned_gpu if assigned_gpu is not None else 0}")
    return torch.device("cpu")


def is_run_done(spec: RunSpec) -> bool:
    """True if `spec.run_dir` holds a finished run with exactly this config."""
    try:
        status = read_json(spec.run_dir / "status.json")
        saved_config = read_json(spec.run_dir / "config.json")
    except (FileNotFoundError, ValueError):
        return False
    fresh = to_jsonable(config_to_dict(spec.config))
    return status.get("status") == "done" and saved_config == fresh and (spec.run_dir / "summary.json").exists()


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
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState  # initialises the process group once; the trainer's Accelerator reuses it

    return PartialState(cpu=not torch.cuda.is_available())


def _prepare_clean_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if any((run_dir / name).exists() for name in RUN_FILES) or not any(run_dir.iterdir()):
            shutil.rmtree(run_dir)
        else:
            raise FileExistsError(f"{run_dir} exists and is not a run directory of this toolkit; remove it first")
    run_dir.mkdir(parents=True)


def execute_run(family: ExperimentFamily, spec: RunSpec, assigned_gpu: int | None,
                run_dirs_by_name: dict[str, Path], rerun: bool = False) -> RunResult:
    """Run one experiment in this process and record its status. Never raises for a failing experiment."""
    started = time.time()
    state = launch_state()
    is_main = state is None or state.is_main_process
    already_done = not rerun and is_run_done(spec)
    if state is not None:
        state.wait_for_everyone()  # every process has read the old status before the main one cleans up
    if already_done:
        return RunResult(spec.name, "cached", 0.0, str(spec.run_dir))
    status = {"status": "running", "started_at": started, "overrides": spec.overrides}
    if is_main:
        _prepare_clean_dir(spec.run_dir)
        atomic_write_json(spec.run_dir / "config.json", config_to_dict(spec.config))
        atomic_write_json(spec.run_dir / "status.json", status)
    if state is not None:
        state.wait_for_everyone()
    log_name = "run.log" if is_main else f"run.rank{state.process_index}.log"
    handler = logging.FileHandler(spec.run_dir / log_name, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)
    metrics_logger = None
    try:
        config = spec.config
        seed_everything(config.random_seed)
        device = resolve_device(config.device, assigned_gpu)
        log.info("run %s on %s, seed %d, config %s", spec.name, device, config.random_seed, config_to_dict(config))
        metrics_logger = _NullMetricsLogger() if not is_main else MetricsLogger(
            spec.run_dir, use_wandb=config.use_wandb, wandb_project=config.wandb_project,
            wandb_run_name=spec.name, wandb_config=config_to_dict(config))
        context = RunContext(spec.run_dir, device, metrics_logger, config.random_seed, run_dirs_by_name)
        summary = family.run(config, context)
        metrics_logger.close(save_plots=config.save_metric_plots)
        if is_main:
            atomic_write_json(spec.run_dir / "summary.json", summary)
        status.update(status="done", finished_at=time.time(), seconds=time.time() - started, timings=context.timings)
        result = RunResult(spec.name, "done", time.time() - started, str(spec.run_dir))
    except Exception as err:  # one failing run must not stop the plan
        if metrics_logger is not None:
            metrics_logger.close(save_plots=False)
        log.error("run %s failed: %s", spec.name, err, exc_info=True)
        status.update(status="failed", finished_at=time.time(), seconds=time.time() - started,
                      error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        result = RunResult(spec.name, "failed", time.time() - started, str(spec.run_dir), status["error"])
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
    if is_main:
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
    """The executor that runs the plan's runs: inline (sequential), worker processes, or Ray."""
    if executor_name == "ray":
        from common.ray_executor import RayExecutor  # optional dependency, imported only when asked for

        return RayExecutor(address=ray_address)
    if plan.num_parallel > 1:
        return futures.ProcessPoolExecutor(plan.num_parallel, mp_context=multiprocessing.get_context("spawn"))
    return InlineExecutor()


def run_plan(plan: Plan, family: ExperimentFamily, *, rerun: bool = False, executor_name: str = "local",
             ray_address: str | None = None) -> list[RunResult]:
    """Execute the plan's runs in dependency order; dependents of a failed run are skipped."""
    run_dirs = {spec.name: spec.run_dir for spec in plan.runs}
    results: dict[str, RunResult] = {}
    free_gpus = list(plan.gpu_ids_pool) if torch.cuda.is_available() else []
    pending = list(plan.runs)
    running: dict[futures.Future, tuple[RunSpec, int | None]] = {}
    executor = make_executor(plan, executor_name, ray_address)
    slots = plan.num_parallel if executor_name == "local" else max(plan.num_parallel, len(plan.runs))
    with executor, tqdm(total=len(plan.runs), desc=f"plan {plan.name}", unit="run") as progress:
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
                    running[executor.submit(execute_run, family, spec, gpu, run_dirs, rerun)] = (spec, gpu)
            if not running:
                continue
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                spec, gpu = running.pop(future)
                if gpu is not None:
                    free_gpus.append(gpu)
                try:
                    results[spec.name] = future.result()
                except Exception as err:  # the worker itself died (e.g. out of memory)
                    results[spec.name] = RunResult(spec.name, "failed", 0.0, str(spec.run_dir), repr(err))
                progress.set_postfix_str(f"{spec.name}: {results[spec.name].status}")
                progress.update(1)
    return [results[spec.name] for spec in plan.runs]


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


def main(family: ExperimentFamily, argv: list[str] | None = None) -> int:
    """Command-line entry point shared by every `*_experiment_plan_runner.py`. Returns the exit code."""
    parser = argparse.ArgumentParser(description=f"Run a {family.name} experiment plan.")
    parser.add_argument("--plan_config_path", required=True, type=Path, help="JSON plan file")
    parser.add_argument("--dry_run", action="store_true", help="print the expanded runs and exit")
    parser.add_argument("--rerun", action="store_true", help="redo runs that are already done")
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="where runs execute")
    parser.add_argument("--ray_address", default=None, help="Ray cluster address (default: start a local one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        plan = load_plan(args.plan_config_path, family.config_cls)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_dry_run(plan))
        return 0
    if plan.ignored_legacy_fields:
        log.warning("plan fields kept for compatibility and ignored: %s", plan.ignored_legacy_fields)
    state = launch_state()
    if state is not None and not state.is_main_process:  # the other processes of a torchrun launch
        results = run_plan(plan, family, rerun=args.rerun)
        return 0 if all(r.status in ("done", "cached") for r in results) else 1
    outputs_dir = plan.runs[0].run_dir.parent if plan.runs else Path(".")
    outputs_dir.mkdir(parents=True, exist_ok=True)
    plan_stem = sanitize_name(plan.name)
    handler = logging.FileHandler(outputs_dir / f"{plan_stem}.plan.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    log.info("plan %s (%s): %d run(s)\n%s", plan.name, args.plan_config_path, len(plan.runs), format_dry_run(plan))
    try:
        results = run_plan(plan, family, rerun=args.rerun, executor_name=args.executor, ray_address=args.ray_address)
    except ImportError as err:  # an optional executor (Ray) that is not installed
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    table = format_results_table(results)
    print(table)
    with open(outputs_dir / f"{plan_stem}.plan.log", "a", encoding="utf-8") as plan_log:
        plan_log.write(table + "\n")
    atomic_write_json(outputs_dir / f"{plan_stem}.plan_status.json",
                      {"plan": str(args.plan_config_path), "runs": [vars(r) for r in results]})
    return 0 if all(r.status in ("done", "cached") for r in results) else 1
