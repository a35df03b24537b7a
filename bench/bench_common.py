"""Shared helpers of the benchmark scripts: worker subprocesses with their peak RSS, medians, tables, RESULTS.md.

Each benchmark runs the competitor and ours back to back on the same machine, several repetitions, and reports
medians and ratios (absolute times vary from machine to machine; ratios are what we track). Sides whose memory
is compared run in their own subprocess ("worker"), so each peak resident set size (RSS) belongs to one side:

    result = run_worker(Path(__file__), "ours", {"steps": 3})      # in the parent
    if __name__ == "__main__":
        worker_main(WORKERS) or main()                              # in the script: dispatches --worker calls

A worker is a function `fn(**kwargs) -> dict` (JSON-able). `worker_main` runs it and adds `peak_rss_bytes`, the
child's own `getrusage(RUSAGE_SELF).ru_maxrss` at exit (Linux reports KiB; converted to bytes), and
`rss_after_imports_bytes` (RSS when the worker starts, after python, torch and the script's imports).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = PROJECT_ROOT / "bench" / "RESULTS.md"
GIB = 1024 ** 3


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process now (bytes)."""
    return psutil.Process().memory_info().rss


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads in torch (0 = leave torch's default, one per visible core)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def run_worker(script: Path, name: str, kwargs: dict, threads: int = 0, timeout_seconds: float | None = None) -> dict:
    """Run worker `name` of `script` in a fresh python process and return its result dict.

    The child's stderr (progress bars, logs) passes through; its result comes back through a temporary JSON file.
    `threads` > 0 fixes the child's torch/OpenMP thread count (OMP_NUM_THREADS and `torch.set_num_threads`).

    Raises:
        RuntimeError: the child exited with a non-zero code (its stderr was shown above).
    """
    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        output = Path(tmp) / "result.json"
        command = [sys.executable, str(script), "--worker", name, "--worker_kwargs", json.dumps(kwargs),
                   "--worker_output", str(output), "--threads", str(threads)]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
        completed = subprocess.run(command, cwd=PROJECT_ROOT, env=env, timeout=timeout_seconds, stdout=sys.stderr)
        if completed.returncode != 0 or not output.exists():
            raise RuntimeError(f"worker {name!r} of {script.name} failed with exit code {completed.returncode} "
                               f"(kwargs {kwargs}); see its output above")
        return json.loads(output.read_text())


def worker_main(workers: dict[str, Callable[..., dict]], argv: Sequence[str] | None = None) -> bool:
    """If the command line asks for a worker (`--worker NAME`), run it, write its result and return True.

    Returns False (doing nothing) for an ordinary command line, so a script ends with
    `worker_main(WORKERS) or main()`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" not in argv:
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, choices=sorted(workers))
    parser.add_argument("--worker_kwargs", default="{}")
    parser.add_argument("--worker_output", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rss_after_imports = current_rss_bytes()
    result = workers[args.worker](**json.loads(args.worker_kwargs))
    result.update(peak_rss_bytes=peak_rss_bytes(), rss_after_imports_bytes=rss_after_imports)
    Path(args.worker_output).write_text(json.dumps(result))
    return True


def interleaved(names: Sequence[str], repetition: int) -> list[str]:
    """Order of the sides in repetition `repetition`: as given on even repetitions, reversed on odd ones."""
    return list(names) if repetition % 2 == 0 else list(reversed(names))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], digits: int = 2) -> str:
    """'median (min-max, n=N)' of the values."""
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f}, n={len(values)})"


def gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed
        return "not installed"


THREADS_HELP = ("torch/OpenMP threads per measured process; 0 = torch's default (one per core). Default 1: on the "
                "shared, oversubscribed 2-core machine of RESULTS.md, 2 threads made a forward pass 4-5x slower "
                "(OpenMP threads spin-waiting for each other) than 1 thread")


def machine_lines(command: Sequence[str], threads: int) -> list[str]:
    """Markdown bullet lines: date, machine, load, versions, thread count and the exact command."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    versions = ", ".join(f"{name} {_package_version(name)}" for name in ("torch", "transformers", "trl", "accelerate"))
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {cpu_model}, {os.cpu_count()} CPU cores visible, torch threads "
        f"per process {threads or 'default'}, {psutil.virtual_memory().total / GIB:.0f} GiB RAM; load average at the end "
        f"(1/5/15 min) {load} (shared machine: other jobs ran at the same time)",
        f"- versions: python {platform.python_version()}, {versions}",
        f"- command: `python {' '.join(command)}`",
    ]


def update_results_section(key: str, markdown: str, path: Path = RESULTS_PATH) -> None:
    """Replace the section tagged `key` in RESULTS.md (between its begin/end comments), or append it."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


CHES_RESULTS_PATH = PROJECT_ROOT / "bench" / "RESULTS_ches.md"


def sync_ches_section(path: Path = RESULTS_PATH) -> None:
    """Copy bench/RESULTS_ches.md (written by bench/bench_ches.py, owned by the CHES module) into the `ches` section."""
    if not CHES_RESULTS_PATH.exists():
        return
    body = CHES_RESULTS_PATH.read_text(encoding="utf-8").strip().splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]
    header = ["## 2. CHES: ours vs a plain batch-1 loop (`bench/bench_ches.py`, copied from `bench/RESULTS_ches.md`)", "",
              "Written by the CHES module's own script; copied here unchanged each time a benchmark of this folder "
              "writes RESULTS.md. Rerun it with `python bench/bench_ches.py --help` for the options."]
    update_results_section("ches", "\n".join(header + body), path)
