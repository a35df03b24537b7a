"""Run-config base class and the contract every experiment family implements.

A plan (JSON) expands into one config dataclass instance per run (see `common/plan.py`). Each experiment
family subclasses `RunConfig` with its own typed fields and defaults, and provides a `run` function:

    run(config: MyConfig, ctx: RunContext) -> dict          # returns the run's summary (JSON-able)

The runner (`common/runner.py`) owns the run directory, seeding, status, `summary.json` and logging; the
experiment only computes and logs metrics through `ctx.logger.log(step, **scalars)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

MAX_SEED = 2**32  # numpy's seeds are 32-bit: every seed field must be < 2**32
# Fields of the reference implementation's plans that have no effect here. They are accepted so those plans
# still validate, and listed once per plan (see `common/plan.py`).
LEGACY_IGNORED_FIELDS = frozenset(
    {
        "trainer_checkpoint", "validate_every", "disable_console_log", "save_logs",
        "train_batch_log_interval", "epoch_log_interval", "save_every_num_val", "use_tensorboard",
        "wandb_resume_path", "wandb_entity_name", "wandb_track_model", "wandb_exclude_files",
        "score_metric_name", "is_train_metric", "score_largest", "return_best_score", "save_checkpoints",
        "num_checkpoints", "save_checkpoints_by_score", "early_stop", "early_stop_min_delta",
        "early_stop_patience", "early_stop_cooldown", "early_stop_restore_best_weights",
        "stop_on_zero_train_loss", "stop_on_perfect_train_acc", "stop_on_perfect_train_acc_patience",
        "plot_metric_groups", "train_batch_size", "load_dataset_to_gpu", "model_cache_dir",
    }
)
# Reference plan fields that mean the same as one of ours under another name: reference name -> our name.
LEGACY_RENAMED_FIELDS = {"wandb_project_name": "wandb_project"}
# Reference plan fields mapped onto ours with a rule (see `common.plan_checks.map_legacy_fields`).
LEGACY_MAPPED_FIELDS = frozenset({"gpu_ids"})
# The reference plans' placeholder for a value the user must provide (e.g. the SFT checkpoint).
FILL_THIS_IN = "FILL_THIS_IN"
# Names used elsewhere (the reference scripts, TRL, HF Trainer) for our fields: suggested for unknown fields.
FIELD_ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "seed": "random_seed",
    "gradient_accumulation_steps": "gradient_accumulation", "optimizer_name": "optimizer", "beta": "kl_coeff",
    "output_dir": "outputs_dir", "run_name": "experiment_name", "model_name": "model",
    "model_name_or_path": "model", "batch_size_per_gpu_proc": "batch_size", "per_device_train_batch_size": "batch_size",
    "preference_similarity_path": "similarity_results_path", "preference_dataset_path": "dataset",
    "use_samples_with_preference_similarity_quantile": "quantile", "eval_every_epochs": "eval_every",
    "loss_type": "objective", "wandb_project_name": "wandb_project", "optim": "optimizer", "lora_r": "lora_rank",
}


@dataclass(kw_only=True)
class RunConfig:
    """Fields shared by every experiment family.

    Every config field is documented as `name (`type`, defaults to `value`): meaning, range, source` (TRL's
    `dpo_config.py` style; `--list_fields` prints these, `common/cli_overrides.py`).

    Parameters of every run:
        experiment_name (`str`, defaults to `"run"`): Run name; may use `{field}` templates filled from the same
            config. After templating, '.' and ',' become '-', and '[', ']' and spaces are removed.
        outputs_dir (`str`, defaults to `"outputs"`): Parent directory; the run writes to
            `<outputs_dir>/<experiment_name>`.
        random_seed (`int`, defaults to `-1`): Seed for python/numpy/torch in [0, 2**32); -1 derives it
            deterministically from the run name (recorded in config.json).
        device (`str`, defaults to `"auto"`): `auto` (the GPU the runner assigns, else CPU), `cpu`, or `cuda:N`.
        use_wandb (`bool`, defaults to `False`): Also log metrics to Weights & Biases (honours
            WANDB_MODE=offline).
        wandb_project (`str`, defaults to `"likelihood-displacement"`): W&B project name (reference:
            `wandb_project_name`).
        save_metric_plots (`bool`, defaults to `True`): Draw the run's metric panels into `<run dir>/plots/` at the
            end.
        num_gpus (`float`, defaults to `0.0`): GPUs one run needs (used by the parallel and Ray executors); 0 = a
            CPU-only run unless the runner assigns a GPU from `gpu_ids_pool`.
        num_cpus (`float`, defaults to `1.0`): CPUs one run needs (Ray executor).
    """

    experiment_name: str = "run"
    outputs_dir: str = "outputs"
    random_seed: int = -1
    device: str = "auto"
    use_wandb: bool = False
    wandb_project: str = "likelihood-displacement"
    save_metric_plots: bool = True
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    @classmethod
    def input_file_fields(cls) -> tuple[str, ...]:
        """Names of the fields that hold paths of input files or directories the run reads (data sets,
        similarity files, checkpoints). Plan validation checks they exist (unless a `{run:...}` makes them), and
        a finished run's identity includes a fingerprint of each (`common.run_state`). Default: none."""
        return ()

    def validate(self) -> list[str]:
        """Cross-field checks. Returns a list of problems (empty if valid); subclasses extend it."""
        problems = []
        if not -1 <= self.random_seed < MAX_SEED:
            problems.append(f"random_seed must be in [0, 2**32) or -1 (derive from name), got {self.random_seed}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda:N', got {self.device!r}")
        return problems

    @classmethod
    def input_file_hint(cls, field_name: str, value: str) -> str:
        """How to make or get the input file `value` of field `field_name` (shown when it is missing)."""
        from common.data_locations import how_to_get  # deferred: keeps this module free of data-layout imports

        return how_to_get(value)

    def deferred_checks(self) -> list[str]:
        """Checks `validate` could not do without loading, converting or downloading something; they run when
        the run starts. One line each, reported once per plan (e.g. "token check deferred to run start")."""
        return []


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a plain JSON-able dict (field order preserved)."""
    return dataclasses.asdict(config)


class MetricsSink(Protocol):
    """What an experiment logs through (implemented by `common.metrics_logger.MetricsLogger`)."""

    def log(self, step: int, **scalars: float) -> None: ...


@dataclass
class RunContext:
    """Everything the runner hands to an experiment's `run` function.

    Attributes:
        run_dir: The run's own directory (exists, empty apart from config/status/log files).
        device: Torch device to compute on.
        logger: Metrics sink; `logger.log(step, **scalars)` appends one line to metrics.jsonl (flushed).
        seed: The seed actually used (already applied to python/numpy/torch).
        run_dirs_by_name: Directory of every run of the plan, by experiment_name (for chained runs).
        timings: Wall-clock seconds the experiment reports (setup, per step, ...). The runner writes them to
            status.json, not summary.json, so two runs of the same config give byte-identical summaries.
    """

    run_dir: Path
    device: torch.device
    logger: MetricsSink
    seed: int
    run_dirs_by_name: dict[str, Path] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentFamily:
    """An experiment family as the plan runner sees it: a config schema and a run function."""

    name: str
    config_cls: type[RunConfig]
    run: Callable[[Any, RunContext], dict]
