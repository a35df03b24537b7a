"""Section 3 (Tables 1-3 analogue): summarise the finished runs of reproduction/plans/section3_smollm2.json.

Every number comes from the run directories through the results printer's functions
(`persona_experiments.results.summarize_setting`, which also computes the reference printer's statistics of
`persona_experiments/reference_statistics.py`). A run belongs to a cell (token pair, start) by its config:
the pair by (answer_matching_behavior_to_use, output_tokens_matching_yes, output_tokens_matching_no) as in
`section3_plan.TOKEN_PAIRS`, the start by (objective, whether load_model_checkpoint is set) as in
`section3_plan.STARTS`. Cells are reported with "done / expected" counts, expected = the number of seeds of the
plan, so a partial plan is visible as such.

Quantities per cell (over the runs the results printer keeps: the loss never rose between tracked steps):
    preferred prob          pi(y+|x) initial and final, mean ± population std over runs
    largest decrease        max over t < t' of pi_t(y+) - pi_t'(y+) (probability units, >= 0), mean ± std
    log-prob change         log pi_final(y+|x) - log pi_0(y+|x) (nats), mean ± std
    decreased (reference)   prompts whose pi(y+) fell between two consecutive steps at least once
    final < initial         runs whose final pi(y+) is below its initial value
    tokens up most          the reference's top-1 tokens by probability increase at the last reference step run
    unembeddings            ||W+||, ||W-||, <W+, W->, cosine, ||W+|| - <W+, W->/||W+|| (initial weights)
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from common.io_utils import RunDiscoveryError
from persona_experiments.results import RunRecord, find_runs, load_trajectory, summarize_setting
from reproduction.section3_plan import STARTS, TOKEN_PAIRS

PAIR_LABELS = {"yes_vs_no": "'Yes' vs 'No'", "no_vs_never": "'No' vs 'Never'",
               "no_vs_lower_no": "'No' vs 'no'", "yes_vs_lower_yes": "'Yes' vs 'yes'"}
START_LABELS = {"dpo_base": "DPO from the instruct model", "dpo_post_sft": "DPO after SFT",
                "ipo_post_sft": "IPO after SFT"}


def cell_of(config: dict) -> tuple[str, str] | None:
    """(pair, start) of a single-prompt run's config, "sft" for the SFT stage, None for a run of another plan."""
    if config.get("objective") == "cross_entropy":
        return ("sft", "sft")
    key = (config.get("answer_matching_behavior_to_use"), *(config.get("output_tokens_matching_yes") or ["?"])[:1],
           *(config.get("output_tokens_matching_no") or ["?"])[:1])
    pair = next((name for name, value in TOKEN_PAIRS.items() if value == key), None)
    from_checkpoint = bool(config.get("load_model_checkpoint"))
    start = next((name for name, (objective, _, _, checkpoint) in STARTS.items()
                  if objective == config.get("objective") and bool(checkpoint) == from_checkpoint), None)
    return (pair, start) if pair and start else None


def _stat(value: dict) -> dict:
    """{'mean', 'std'} with NaN mapped to None (JSON has no NaN)."""
    return {key: (None if value[key] is None or math.isnan(value[key]) else float(value[key]))
            for key in ("mean", "std")}


def mean_trajectory(runs: list[RunRecord]) -> dict:
    """Per-step mean over runs of log pi(y+|x) and log pi(y-|x) (nats; each run's value is the mean over its
    prompts, i.e. the prompt's own value for these one-prompt runs), at the steps present in every run."""
    series = [load_trajectory(run) for run in runs]
    common_steps = sorted(set.intersection(*(set(steps) for steps, _, _ in series))) if series else []
    out = {"steps": common_steps, "preferred_logprob_mean": [], "dispreferred_logprob_mean": []}
    for step in common_steps:
        for key, column in (("preferred_logprob_mean", 1), ("dispreferred_logprob_mean", 2)):
            values = [trajectory[column][trajectory[0].index(step)] for trajectory in series]
            out[key].append(sum(values) / len(values))
    return out


def last_reference_top_tokens(reference: dict, limit: int = 3) -> dict:
    """The reference top-1 table at the latest reference step the runs reached: step and first `limit` rows."""
    tables = reference.get("top_tokens_by_prob_increase") or {}
    if not tables:
        return {"step": None, "rows": []}
    step = max(tables, key=lambda name: int(name.split("_")[1]))
    rows = [{"token": row["token"], "count": int(row["count"]), "frequency": float(row["frequency"]),
             "mean_increase": float(row["mean_increase"])} for row in tables[step]["top_1"][:limit]]
    return {"step": int(step.split("_")[1]), "rows": rows}


def summarize_cell(runs: list[RunRecord], expected: int) -> dict:
    """The compact numbers of one (pair, start) cell (see module docstring); drawn into tables and figures."""
    stats = summarize_setting(runs, keep_unstable=False)
    reference = stats["reference"]
    geometry = reference.get("geometry", {})
    return {
        "num_done": len(runs), "num_expected": expected, "num_used": stats["num_used"],
        "num_excluded_loss_increased": stats["num_unstable"],
        "preferred_tokens": sorted({t for run in runs for t in run.summary.get("preferred_token_texts", [])}),
        "dispreferred_tokens": sorted({t for run in runs for t in run.summary.get("dispreferred_token_texts", [])}),
        "initial_preferred_prob": _stat(stats["initial_preferred_prob_mean"]),
        "final_preferred_prob": _stat(stats["final_preferred_prob_mean"]),
        "largest_preferred_prob_decrease": _stat(stats["largest_preferred_prob_decrease_mean"]),
        "preferred_logprob_change": _stat(stats["preferred_logprob_change_mean"]),
        "initial_dispreferred_prob": _stat(stats["initial_dispreferred_prob_mean"]),
        "final_dispreferred_prob": _stat(stats["final_dispreferred_prob_mean"]),
        "num_preferred_final_below_initial": stats["num_preferred_final_below_initial"],
        "reference_num_examples": reference.get("num_examples", 0),
        "reference_num_decreased_at_some_step": reference.get("num_examples_preferred_decreased_at_some_step", 0),
        "reference_largest_prob_decrease_mean": reference.get("largest_prob_decrease", {}).get("mean"),
        "reference_top_tokens": last_reference_top_tokens(reference),
        "unembedding": {"preferred_norm": geometry.get("preferred_norm", {}).get("initial"),
                        "dispreferred_norm": geometry.get("dispreferred_norm", {}).get("initial"),
                        "inner_product": geometry.get("inner_product", {}).get("initial"),
                        "cosine": stats["geometry"].get("start/cosine"),
                        "preferred_norm_minus_projection_coef":
                            geometry.get("preferred_norm_minus_projection_coef", {}).get("initial")},
        "trajectory": mean_trajectory([run for run in runs if run.name in set(stats["runs"])]),
    }


def _run_seconds(runs: list[RunRecord]) -> float:
    """Sum of the runs' wall-clock seconds as the runner recorded them (status.json `seconds`; 0 when absent)."""
    from common.io_utils import read_json

    total = 0.0
    for run in runs:
        try:
            total += float(read_json(run.run_dir / "status.json").get("seconds") or 0.0)
        except (OSError, ValueError):
            continue
    return total


def collect_section3(experiments_dir: Path, num_seeds: int) -> dict:
    """Summary of a Section 3 outputs directory: cells keyed "pair/start", the SFT stage, notes, counts.

    A missing directory, or one without runs, gives {"status": "absent", ...} rather than an error, so the
    report can say so."""
    try:
        runs, notes = find_runs(Path(experiments_dir))
    except RunDiscoveryError as error:
        return {"status": "absent", "reason": str(error), "num_done": 0,
                "num_expected": num_seeds * len(TOKEN_PAIRS) * len(STARTS) + 1, "cells": {}, "notes": []}
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        cell = cell_of(run.config)
        if cell is None:
            notes.append(f"run {run.name}: not a run of the Section 3 plan (pair or start not recognised), left out")
        else:
            groups[cell].append(run)
    cells = {f"{pair}/{start}": summarize_cell(groups[(pair, start)], num_seeds)
             for start in STARTS for pair in TOKEN_PAIRS if groups.get((pair, start))}
    sft_runs = groups.get(("sft", "sft"), [])
    sft = ({"done": True, "initial_preferred_prob": sft_runs[0].summary.get("initial_preferred_prob_mean"),
            "final_preferred_prob": sft_runs[0].summary.get("final_preferred_prob_mean"),
            "num_examples": sft_runs[0].summary.get("num_examples")} if sft_runs else {"done": False})
    num_done = sum(len(group) for group in groups.values())
    seconds = {key: _run_seconds([run for (pair, start), group in groups.items() if key in (start, "all")
                                  for run in group]) for key in ("sft", "all")}
    num_expected = num_seeds * len(TOKEN_PAIRS) * len(STARTS) + 1
    status = "complete" if num_done >= num_expected else "partial"
    return {"status": status, "experiments_dir": str(experiments_dir), "num_done": num_done,
            "num_expected": num_expected, "num_seeds": num_seeds, "sft": sft, "cells": cells, "notes": notes,
            "wall_seconds": seconds}
