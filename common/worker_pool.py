"""Worker processes for `num_parallel` > 1 in which a dying worker takes only its own run with it.

`concurrent.futures.ProcessPoolExecutor` breaks as a whole when one worker dies (kill -9, out of memory): every
pending future fails with BrokenProcessPool and the healthy workers are terminated. Here each worker is its own
spawned process with its own pipe; a call whose worker dies fails with `WorkerDiedError` (naming the signal or
exit code), the dead worker is replaced by a fresh one on the next submit, and the other calls go on. Idle
workers are reused, so the in-process model cache still saves disk reads between runs.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
from typing import Any, Callable

GRACE_SECONDS = 2.0  # on shutdown with cancel_futures: time for workers to end on their own (a Ctrl-C reached them)
INTERRUPT_SECONDS = 30.0  # then time after SIGINT to record their runs as interrupted, before SIGKILL


class WorkerDiedError(RuntimeError):
    """The worker process running a call ended without returning (killed by a signal or exited)."""


def describe_exit(exitcode: int | None) -> str:
    """'killed by signal SIGKILL (9)' for a negative exit code, else 'exited with code N'."""
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {signal.Signals(-exitcode).name} ({-exitcode})"
    return f"exited with code {exitcode}"


def _worker_main(connection: multiprocessing.connection.Connection) -> None:
    """Loop of a worker process: receive (fn, args), send back (True, result) or (False, exception)."""
    while True:
        try:
            message = connection.recv_bytes()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            call = pickle.loads(message)  # here, so that a call that cannot be unpickled is reported, not fatal
            if call is None:
                return
            fn, args = call
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as error:  # noqa: BLE001 - forwarded to the caller
            outcome = (False, error)
        try:
            connection.send(outcome)
        except Exception:  # an unpicklable result or exception
            connection.send((False, RuntimeError(f"worker result could not be sent back: {outcome[1]!r}")))
        if not outcome[0] and isinstance(outcome[1], KeyboardInterrupt):
            return


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child,), name="ld-run-worker")
        self.process.start()
        child.close()

    def stop(self) -> None:
        """Ask an idle worker to exit (nothing happens if it is already gone)."""
        try:
            self.connection.send(None)
        except OSError:  # BrokenPipeError: the process is gone
            pass

    def call(self, fn: Callable, args: tuple) -> Any:
        """fn(*args) in the worker; raises what it raised, or WorkerDiedError if the process ended first."""
        self.connection.send((fn, args))
        ready = multiprocessing.connection.wait([self.connection, self.process.sentinel])
        if self.connection in ready:
            try:
                succeeded, value = self.connection.recv()
            except EOFError:
                pass
            else:
                if succeeded:
                    return value
                raise value
        self.process.join()
        raise WorkerDiedError(f"worker died (process {self.process.pid} {describe_exit(self.process.exitcode)})")


class IsolatedProcessPool(futures.Executor):
    """A `concurrent.futures.Executor` over spawned worker processes, one call per worker at a time.

    The caller bounds the number of concurrent calls (the runner submits at most `num_parallel`)."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._lock = threading.Lock()

    def _take_worker(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    self._busy.add(worker)
                    return worker
        worker = _Worker(self._context)
        with self._lock:
            self._busy.add(worker)
        return worker

    def _serve(self, worker: _Worker, fn: Callable, args: tuple, future: futures.Future) -> None:
        try:
            outcome: tuple[bool, Any] = (True, worker.call(fn, args))
        except BaseException as error:  # noqa: BLE001 - forwarded through the future
            outcome = (False, error)
        with self._lock:  # back to the idle list before the caller hears of it, so it is reused
            self._busy.discard(worker)
            if worker.process.is_alive():
                self._idle.append(worker)
        if outcome[0]:
            future.set_result(outcome[1])
        else:
            future.set_exception(outcome[1])

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> futures.Future:
        if kwargs:
            raise TypeError("IsolatedProcessPool.submit takes positional arguments only")
        future: futures.Future = futures.Future()
        future.set_running_or_notify_cancel()
        worker = self._take_worker()
        threading.Thread(target=self._serve, args=(worker, fn, args, future), daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers. With `cancel_futures` (Ctrl-C), busy workers get GRACE_SECONDS to end, then SIGINT
        (their runs record "interrupted"), then SIGKILL after INTERRUPT_SECONDS. Otherwise busy workers finish."""
        with self._lock:
            busy, idle = list(self._busy), list(self._idle)
            self._idle.clear()
        for worker in idle:
            worker.stop()
        if cancel_futures:
            for worker in busy:
                worker.process.join(GRACE_SECONDS)
                if worker.process.is_alive():
                    os.kill(worker.process.pid, signal.SIGINT)
            for worker in busy:
                worker.process.join(INTERRUPT_SECONDS)
                if worker.process.is_alive():
                    worker.process.kill()
        elif wait:
            for worker in busy:
                while worker in self._busy:
                    worker.process.join(0.1)
                worker.stop()
        for worker in idle + busy:
            worker.process.join(5.0)
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
