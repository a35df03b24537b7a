"""Reference-command front-ends: a set of absl-style flags becomes a one-run plan, run by the plan machinery.

    parser = argparse.ArgumentParser()
    add_dataset_training_flags(parser, ReferenceDefaults(wandb_project="common_dpo", ...))
    args = parser.parse_args()
    values, ignored = dataset_training_fields(args)       # flags -> config fields, flags without effect here
    raise SystemExit(run_single(FAMILY, values, ignored, outputs_dir, run_dir_name(args.run_name, ...)))

The run is validated exactly like a plan (all problems at once, exit 2, nothing written), then executed by
`common.runner.run_plan` (resume, status.json, run.log, summary.json). It writes
`<output_dir>/<wandb_project>/<run name>/` as the reference scripts do.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.cli import add_bool_flag, add_gpu_id_flag, device_from_gpu_id
from common.config import ExperimentFamily
from common.plan import PlanError, parse_plan
from common.run_console import configure_console_logging, format_results_table
from common.runner import run_plan

# Reference flags that mean one of our config fields (for error messages: field -> the flag that sets it).
FLAG_OF_FIELD = {
    "lr": "learning_rate", "epochs": "num_train_epochs", "eval_every": "eval_every_epochs",
    "optimizer": "optimizer_name", "random_seed": "seed", "data_seed": "random_seed_for_training_example_selection",
    "similarity_results_path": "preference_similarity_path",
    "quantile": "use_samples_with_preference_similarity_quantile",
    "batch_size": "batch_size_per_gpu_proc", "gradient_accumulation": "gradient_accumulation_steps",
    "save_model": "save_at_end", "preference_num_samples": "preference_num_samples", "model": "model",
    "objective": "objective", "kl_coeff": "kl_coeff", "sft_coeff": "sft_coeff",
    "pref_similarity_measure": "pref_similarity_measure", "max_input_length": "max_input_length",
    "save_every_epochs": "save_every_epochs",
}
# Reference flags accepted and reported as ignored when given: (flag, default, why it has no effect here).
IGNORED_FLAGS = (
    ("num_proc", 4, "data preprocessing here is single-process"),
    ("cache_dir", None, "models load through common/models.py (the Hugging Face cache, HF_HOME)"),
    ("num_eval_generations_per_prompt", 1, "no generation-based evaluation in this script"),
    ("model_parallel_without_accelerate", False, "one process uses one device; see docs/scaling_out.md"),
)


@dataclass(frozen=True)
class ReferenceDefaults:
    """The defaults that differ between the two reference training scripts."""

    wandb_project: str
    model: str
    learning_rate: float
    quantile: float
    preference_num_samples: int


def add_dataset_training_flags(parser: argparse.ArgumentParser, defaults: ReferenceDefaults) -> None:
    """The flags both reference training scripts share (names and defaults as in the reference)."""
    add = parser.add_argument
    add("--run_name", default="run", help="run name; the directory is <run_name>[_quantile_<q>]_<time>")
    add("--output_dir", default="outputs", help="parent of <wandb_project>/<run directory>. Default outputs")
    add("--wandb_project", default=defaults.wandb_project, help=f"W&B project and directory level. Default "
                                                                f"{defaults.wandb_project}")
    add_bool_flag(parser, "use_wandb", default=False, help="also log to W&B (the reference always did)")
    add("--seed", type=int, default=-1, help="training seed; -1 derives it from the run name")
    add("--random_seed_for_training_example_selection", type=int, default=-1,
        help="seed of the random subset (without a similarity file); -1: data_seed default 0")
    add("--preference_similarity_path", default="", help="file written by compute_preference_similarity_per_example.py")
    add("--use_samples_with_preference_similarity_quantile", type=float, default=defaults.quantile,
        help="train on the preference_num_samples pairs around this similarity quantile")
    add("--pref_similarity_measure", default="ches_scores", help="ches_scores, ln_ches_scores, "
        "minus_normalized_edit_distances or last_hidden_embedding_inner_prods")
    add("--preference_num_samples", type=int, default=defaults.preference_num_samples,
        help="number of training pairs; -1 = all")
    add("--batch_size_per_gpu_proc", type=int, default=4, help="pairs per micro-batch")
    add("--gradient_accumulation_steps", type=int, default=1,
        help="micro-batches per optimizer step (step batch = batch_size_per_gpu_proc x this)")
    add("--model", default=defaults.model, help="built-in name, Hub id or local directory")
    add("--max_input_length", type=int, default=512, help="prompt + response token limit")
    add("--optimizer_name", default="rmsprop", help="rmsprop, adam or sgd")
    add("--learning_rate", type=float, default=defaults.learning_rate)
    add("--num_train_epochs", type=int, default=1)
    add("--eval_every_epochs", type=int, default=1, help="evaluate every this many epochs; <= 0: start and end only")
    add_bool_flag(parser, "save_at_end", default=False, help="save the trained model to <run dir>/model")
    add("--objective", default="dpo", help="dpo, ipo, cross_entropy, ... (docs/losses.md)")
    add("--kl_coeff", type=float, default=0.1, help="beta of DPO, tau of IPO")
    add("--sft_coeff", type=float, default=0.0, help="weight of an added SFT term on the preferred response")
    add_gpu_id_flag(parser)
    add("--num_proc", type=int, default=4, help="accepted for compatibility; no effect here")
    add("--cache_dir", default=None, help="accepted for compatibility; no effect here")
    add("--save_every_epochs", type=int, default=-1,
        help="also save <run dir>/checkpoints/epoch_<E> every this many epochs; <= 0: off")
    add("--num_eval_generations_per_prompt", type=int, default=1, help="accepted for compatibility; no effect here")
    add_bool_flag(parser, "model_parallel_without_accelerate", default=False,
                  help="accepted for compatibility; no effect here")


def dataset_training_fields(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Config fields of `PreferenceTrainingConfig` set by the shared flags, and the ignored flags that were given.

    Rules: the step batch is `batch_size_per_gpu_proc * gradient_accumulation_steps` pairs (the reference
    accumulates that many micro-batches per step); with a similarity file the pool is the file's samples and the
    quantile window has `preference_num_samples` pairs; without one, `preference_num_samples` > 0 draws a random
    subset (seeded by `random_seed_for_training_example_selection`); the held-out split is off (the reference
    evaluates on the training pairs).
    """
    num_samples = args.preference_num_samples if args.preference_num_samples > 0 else None
    values: dict[str, Any] = {
        "model": args.model, "random_seed": args.seed, "wandb_project": args.wandb_project,
        "use_wandb": args.use_wandb, "device": device_from_gpu_id(args.gpu_id),
        "max_input_length": args.max_input_length, "optimizer": args.optimizer_name, "lr": args.learning_rate,
        "epochs": args.num_train_epochs, "eval_every": args.eval_every_epochs if args.eval_every_epochs > 0 else None,
        "save_model": args.save_at_end, "objective": args.objective, "kl_coeff": args.kl_coeff,
        "sft_coeff": args.sft_coeff, "pref_similarity_measure": args.pref_similarity_measure,
        "batch_size": args.batch_size_per_gpu_proc * args.gradient_accumulation_steps,
        "gradient_accumulation": args.gradient_accumulation_steps, "num_eval_samples": 0, "save_metric_plots": False,
        "save_every_epochs": max(args.save_every_epochs, 0),
    }
    if args.random_seed_for_training_example_selection >= 0:
        values["data_seed"] = args.random_seed_for_training_example_selection
    if args.preference_similarity_path:
        values.update(similarity_results_path=args.preference_similarity_path, preference_num_samples=num_samples,
                      quantile=args.use_samples_with_preference_similarity_quantile if num_samples else None)
    else:
        values["num_train_samples"] = num_samples
    ignored = [f"--{flag} ({why})" for flag, default, why in IGNORED_FLAGS if getattr(args, flag) != default]
    return values, ignored


def run_dir_name(run_name: str, quantile: float | None = None, now: datetime.datetime | None = None) -> str:
    """`<run_name>[_quantile_<q>]_<YYYY_MM_DD-HH_MM_SS>-<0..9999>` (UTC), the reference scripts' directory name."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    quantile_part = f"_quantile_{quantile}" if quantile is not None else ""
    return f"{run_name}{quantile_part}_{now:%Y_%m_%d-%H_%M_%S}-{random.randint(0, 9999)}"


def _with_flag_names(problem: str, flag_of_field: dict[str, str]) -> str:
    """A plan problem in flag terms: without the one-run plan's location prefix, with the flag that sets the first
    field it names ("configurations[0] run 'x': lr must be > 0" -> "lr must be > 0 [flag --learning_rate]")."""
    problem = re.sub(r"^configurations\[0\](?: run '[^']*')?(?:\.base_config)?: ", "", problem)
    flags = [flag_of_field[word] for word in re.findall(r"[a-z_]+", problem) if word in flag_of_field]
    return problem + (f" [flag --{flags[0]}]" if flags else "")


def run_single(family: ExperimentFamily, values: dict[str, Any], ignored_flags: list[str], outputs_dir: str,
               run_name: str, extra_flag_of_field: dict[str, str] | None = None) -> int:
    """Validate `values` as a one-run plan and run it. Returns the exit code (0 done, 1 failed, 2 bad flags).

    `extra_flag_of_field`: the script's own flags by the field they set (named in error messages)."""
    configure_console_logging()
    base = {**values, "experiment_name": run_name, "outputs_dir": outputs_dir}
    raw = {"name": run_name, "configurations": [{"base_config": base}]}
    try:
        plan = parse_plan(raw, Path("<command-line flags>"), family.config_cls, sanitize_names=False)
    except PlanError as err:
        print(f"error: invalid flags ({len(err.problems)} problem(s)); fix each and rerun:\n"
              + "\n".join(f"  - {_with_flag_names(problem, {**FLAG_OF_FIELD, **(extra_flag_of_field or {})})}"
                        for problem in err.problems), file=sys.stderr)
        return 2
    if ignored_flags:
        print(f"note: flags without effect here, ignored: {'; '.join(ignored_flags)}", file=sys.stderr)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    logging.getLogger("ld.single_run").info("run %s in %s", run_name, plan.runs[0].run_dir)
    results = run_plan(plan, family)
    print(format_results_table(results))
    (result,) = results
    if result.status != "done":
        first_line = (result.error or "no message").splitlines()[0][:300]
        print(f"error: run {result.name} {result.status}: {first_line} (traceback in {result.run_dir}/run.log)",
              file=sys.stderr)
        return 1
    print(f"run directory: {result.run_dir}")
    return 0
