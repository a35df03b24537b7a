"""Ray executor for plans: every run of a plan becomes one Ray task with the resources its config asks for.

    python <family>_experiment_plan_runner.py --plan_config_path PLAN.json --executor ray [--ray_address ADDR]

`common.runner.run_plan` uses it as a `concurrent.futures.Executor`; dependency order, resume, skipping the
dependents of a failed run and the final table stay the runner's, exactly as with the local executor.
What Ray adds, per run:
  - resources: the config's `num_gpus` / `num_cpus` are the task's Ray resources. Ray picks the node and the
    GPUs and sets CUDA_VISIBLE_DEVICES, so inside the run its GPUs are cuda:0 .. cuda:k-1 (device "auto" ->
    cuda:0; `device_map="auto"` spreads over all k). A run with `num_gpus` 0 sees no GPU (device "auto" -> CPU).
    The runner's `gpu_ids_pool` is not used. A request no node of the cluster can satisfy fails the run at once
    (instead of waiting forever).
  - processes: a run with GPUs executes in a fresh worker process (its GPU memory is freed when it ends);
    CPU-only runs reuse worker processes, like the local process pool (so the in-process model cache helps).
    The two never share a process (distinct runtime environments): CUDA fixes the visible devices when it
    first initialises. Runs are not retried (`max_retries=0`): a crashed worker marks the run "failed", like
    the local executor; rerun the plan to resume.
  - code and paths: workers import the project from the driver's project root (PYTHONPATH in the task's
    runtime_env; or from the code `ray job submit --working-dir` ships) and run in the driver's working
    directory, so relative paths mean what they mean locally (where that directory is missing on a node, a
    relative `outputs_dir` fails the run). `outputs_dir` must be on storage all nodes share.
ADDR connects to a running cluster ("auto" = the one `ray start` made on this machine, "HEAD_IP:6379").
Without it, Ray's own rules apply: the RAY_ADDRESS environment variable, else a cluster `ray start` made on this
machine, else a local instance started for this plan (all CPUs/GPUs of the machine; "local" forces one) and
shut down afterwards. If Ray is already initialised in this process (a test, a notebook), that instance is
used and left running.
"""

from __future__ import annotations

import concurrent.futures as futures
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable

from common.plan import RunSpec

log = logging.getLogger("ld.ray_executor")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAY_MISSING_MESSAGE = ('--executor ray needs Ray, an optional dependency that is not installed: '
                       'pip install "ray[default]==2.60.0"  (or run the plan with the default --executor local)')


def ray_missing_message() -> str:
    """RAY_MISSING_MESSAGE when Ray is not installed, else "" (checked without importing Ray)."""
    return RAY_MISSING_MESSAGE if importlib.util.find_spec("ray") is None else ""


def _run_in_task(driver_cwd: str, fn: Callable, family: Any, spec: RunSpec, *rest: Any) -> Any:
    """Body of the Ray task: move to the driver's working directory, then `fn(family, spec, gpu, *rest)` where
    gpu is 0 (the first of the GPUs Ray made visible to this process) or None when the run has no GPU."""
    import ray

    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)  # the same directory for every task of this plan, so reused workers agree
    elif not spec.run_dir.is_absolute():
        raise RuntimeError(
            f"run '{spec.name}': outputs_dir {spec.config.outputs_dir!r} is a relative path and the driver's working "
            f"directory {driver_cwd} does not exist on node {ray.util.get_node_ip_address()}; set outputs_dir to an "
            "absolute path on storage all nodes share")
    assigned_gpu = 0 if ray.get_gpu_ids() else None
    return fn(family, spec, assigned_gpu, *rest)


class RayExecutor(futures.Executor):
    """Submits `execute_run`-shaped calls as Ray tasks; the results come back as concurrent Futures.

    Args:
        address: Ray cluster address passed to `ray.init` (see the module docstring for None).

    Raises:
        ImportError: Ray is not installed (the message says how to install it).
    """

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ImportError(RAY_MISSING_MESSAGE) from None
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address)
        elif address:
            log.warning("Ray is already initialised in this process; using that instance, not --ray_address %s",
                        address)
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
        # OVERRIDE_ON_ZERO: a task with num_gpus=0 gets CUDA_VISIBLE_DEVICES="" instead of seeing every GPU.
        # WORKER_KIND only separates the worker pools of GPU and CPU runs (Ray pools workers per runtime_env).
        self._runtime_envs = {kind: {"env_vars": {"PYTHONPATH": python_path, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
                                                  "LIKELIHOOD_DISPLACEMENT_WORKER_KIND": kind}}
                              for kind in ("gpu", "cpu")}
        self._node_resources = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        self._submitted: list[tuple[Any, futures.Future]] = []
        log.info("Ray cluster: %d node(s), resources %s", len(self._node_resources), ray.cluster_resources())

    def _unschedulable_reason(self, spec: RunSpec) -> str | None:
        """Why no alive node can run `spec` (its num_gpus / num_cpus exceed every node's), or None if one can."""
        needed = {"GPU": spec.config.num_gpus, "CPU": spec.config.num_cpus}
        if any(all(node.get(name, 0.0) >= amount for name, amount in needed.items())
               for node in self._node_resources):
            return None
        offered = [{name: node.get(name, 0.0) for name in needed} for node in self._node_resources]
        return (f"run '{spec.name}' asks for num_gpus={spec.config.num_gpus}, num_cpus={spec.config.num_cpus}, "
                f"but no node of the Ray cluster has that much (nodes offer {offered}); lower num_gpus/num_cpus in "
                "the plan or add a larger node")

    def submit(self, fn: Callable, family: Any, spec: RunSpec, assigned_gpu: int | None, /, *rest: Any
               ) -> futures.Future:
        """Run `fn(family, spec, gpu, *rest)` as a Ray task sized by `spec.config`; `assigned_gpu` from the
        runner is ignored (Ray assigns the GPUs). Returns a Future of fn's return value."""
        problem = self._unschedulable_reason(spec)
        if problem:
            failed: futures.Future = futures.Future()
            failed.set_exception(RuntimeError(problem))
            return failed
        uses_gpu = spec.config.num_gpus > 0
        task = self._ray.remote(num_cpus=spec.config.num_cpus, num_gpus=spec.config.num_gpus,
                                max_calls=1 if uses_gpu else 0,  # 0 = reuse the worker without limit
                                max_retries=0, runtime_env=self._runtime_envs["gpu" if uses_gpu else "cpu"]
                                )(_run_in_task)
        ref = task.remote(os.getcwd(), fn, family, spec, *rest)
        future = ref.future()
        self._submitted.append((ref, future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for (or cancel) unfinished runs, then stop Ray if this executor started it."""
        unfinished = [ref for ref, future in self._submitted if not future.done()]
        if unfinished and cancel_futures:
            for ref in unfinished:
                self._ray.cancel(ref, force=True)
        elif unfinished and wait:
            self._ray.wait(unfinished, num_returns=len(unfinished))
        self._submitted.clear()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
