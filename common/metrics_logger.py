"""Metrics logging: one JSON line per logged step (flushed as written), optional wandb, optional plots.

    logger = MetricsLogger(run_dir, use_wandb=False)
    logger.log(step=0, loss=0.693, **{"logps/chosen": -1.2})     # -> {"step": 0, "loss": 0.693, ...}
    logger.close(save_plots=True)                                # -> run_dir/plots/<metric>.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.io_utils import read_jsonl, to_jsonable


class NonFiniteLossError(FloatingPointError):
    """Raised when a logged `loss` is NaN or infinite; the runner marks the run failed."""


class MetricsLogger:
    """Appends `{"step": step, **scalars}` lines to `<run_dir>/<filename>` and mirrors them to wandb.

    Args:
        run_dir: Directory of the run (must exist).
        filename: JSONL file name inside `run_dir`. Default "metrics.jsonl".
        use_wandb: Also call `wandb.log` (wandb honours WANDB_MODE=offline). Default False.
        wandb_project: W&B project. wandb_run_name: W&B run name. wandb_config: config dict shown in W&B.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        filename: str = "metrics.jsonl",
        use_wandb: bool = False,
        wandb_project: str = "likelihood-displacement",
        wandb_run_name: str | None = None,
        wandb_config: dict | None = None,
    ) -> None:
        self.path = Path(run_dir) / filename
        self._file = self.path.open("a", encoding="utf-8")
        self._wandb_run = None
        if use_wandb:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("use_wandb is true but wandb is not installed: pip install wandb") from err
            self._wandb_run = wandb.init(
                project=wandb_project, name=wandb_run_name, config=wandb_config, dir=str(run_dir), reinit=True
            )

    def log(self, step: int, **scalars: Any) -> None:
        """Append one record; tensors are converted with `.tolist()`. Raises NonFiniteLossError after writing
        the record if `loss` is NaN or infinite."""
        record = {"step": int(step), **{key: to_jsonable(value) for key, value in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=int(step))
        loss = scalars.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"loss became {float(loss)} at step {step} (see {self.path})")

    def close(self, save_plots: bool = False) -> list[Path]:
        """Close the file (and the wandb run); plot every metric curve if `save_plots`. Returns plot paths."""
        if not self._file.closed:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        return plot_metric_curves(self.path, self.path.parent / "plots") if save_plots else []


def plot_metric_curves(metrics_path: Path, plots_dir: Path) -> list[Path]:
    """Write one PNG per numeric metric in a metrics JSONL file (x = step). Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(metrics_path, allow_partial_last_line=True) if Path(metrics_path).exists() else []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (steps, values) in sorted(curves.items()):
        figure, axis = plt.subplots(figsize=(5, 3.2))
        axis.plot(steps, values, marker="." if len(steps) < 50 else None)
        axis.set_xlabel("step")
        axis.set_title(key)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        path = plots_dir / f"{key.replace('/', '__')}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written
