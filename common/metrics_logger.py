"""Metrics logging: one JSON line per logged step (flushed as written), optional wandb, optional plots.

    logger = MetricsLogger(run_dir, use_wandb=False)
    logger.log(step=0, loss=0.693, **{"logps/chosen": -1.2})     # -> {"step": 0, "loss": 0.693, ...}
    logger.close(save_plots=True)             # -> run_dir/plots/overview.png, other_metrics.png (common/plots.py)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.io_utils import to_jsonable


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
        """Close the file (and the wandb run); with `save_plots` draw the run's overview panels and the other
        changing metrics (`common.plots.plot_run_overview`). Returns the plot paths."""
        if not self._file.closed:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if not save_plots:
            return []
        from common.plots import plot_run_overview  # matplotlib only when plots are asked for

        return plot_run_overview(self.path, self.path.parent / "plots")
