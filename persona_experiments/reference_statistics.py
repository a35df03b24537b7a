"""The reference results printer's statistics, computed from our run directories.

princeton-nlp/unintentional-unalignment's `persona_single_example_results_printer.py` (run as its `main` does:
max_step 100, runs whose training loss rose at some step filtered out) reads per-step arrays saved by its tracker
callback. Our runs record the same quantities at every step (full batch): `tensors.safetensors` (per-example
log-probs, losses, hidden-state norms, unembedding geometry) and `top_tokens.jsonl` (top tokens by probability
increase at steps 1, 5, 10, 25, 50, 100 among others). Step s is the value after s updates in both.

Window: the reference's arrays hold the initial point and the forward of every later training step, i.e. points
0..num_steps-1 (not the point after the last update), cut at max_step: points 0..W, W = min(max_step, num_steps-1).
Definitions (per example, p_t = exp(l_t), l_t = log pi_t(y+|x), L_t = the run's mean training loss at point t):
    decreased at some step     any_{1 <= t <= W} l_t < l_{t-1}
    first decrease index       first t-1 with l_t < l_{t-1} (the reference's 0-based index into its per-step
                               arrays, whose entry j compares point j+1 with point j); min/max/median/mean over the
                               examples that decreased (median = the lower middle value, as torch.median)
    decreased while loss fell  any_t (l_t < l_{t-1} and L_t <= L_{t-1})
    loss increased             any_t L_t > L_{t-1}; the reference filter drops a run if this holds over all its
                               points 0..num_steps-1 (not only the window), with no tolerance
    largest decrease           the pair (s <= e) maximising v_s - v_e over points 0..W (first in order of e, then s);
                               reported as v_e - v_s (<= 0) with both steps, for v = l and for v = p
    top-k tokens at step s     over all examples, the ids among the k largest probability increases
                               exp(l_s[v]) - exp(l_0[v]): count, frequency = count / number of examples, mean
                               increase; sorted by count (ties by id)
    geometry                   ||W+||, ||W-||, <W+, W->, projection coefficient <W+, W->/||W+||, ||W+|| minus it,
                               ||W- - (<W+, W->/||W+||^2) W+||; initial (before training) and final (after it)
    hidden norms               ||h_0||, ||h_W'|| and ||h_W' - h_0|| at the last training forward W' = num_steps-1
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.io_utils import read_jsonl

REFERENCE_STEPS = (1, 5, 10, 25, 50, 100)
REFERENCE_TOP_K = (1, 2, 3)
REFERENCE_MAX_STEP = 100
TOKENS_TO_PRINT = 20
GEOMETRY_ROWS = ("preferred_norm", "dispreferred_norm", "inner_product", "projection_coef",
                 "preferred_norm_minus_projection_coef", "orthogonal_norm")


@dataclass
class RunArrays:
    """What the reference statistics need from one run directory (N examples, T points; numpy arrays).

    Attributes:
        name: Run directory name.
        steps: (T,) tracked steps. preferred_logprobs: (T, N). mean_losses: (T,) mean over the N examples.
        num_steps: Training steps of the run (points 0..num_steps-1 are training forwards).
        example_ids: (N,) dataset rows.
        hidden_norms / hidden_distances: (T, N) ||h_t|| and ||h_t - h_0||.
        geometry: "start/<key>" and "end/<key>" -> (N,) arrays (persona_experiments/geometry.py keys).
        top_tokens: step -> list over examples of [(id, token, increase), ...] by probability increase.
    """

    name: str
    steps: np.ndarray
    preferred_logprobs: np.ndarray
    mean_losses: np.ndarray
    num_steps: int
    example_ids: np.ndarray
    hidden_norms: np.ndarray
    hidden_distances: np.ndarray
    geometry: dict[str, np.ndarray]
    top_tokens: dict[int, list[list[tuple[int, str, float]]]]


def load_run_arrays(run_dir: Path, name: str, num_steps: int) -> RunArrays:
    """Read tensors.safetensors and top_tokens.jsonl of a finished persona run (FileNotFoundError if missing)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(run_dir) / "tensors.safetensors"))
    top_tokens: dict[int, list[list[tuple[int, str, float]]]] = {}
    top_path = Path(run_dir) / "top_tokens.jsonl"
    if top_path.exists():
        for record in read_jsonl(top_path):
            top_tokens[int(record["step"])] = [[(int(e["id"]), e["token"], float(e["increase"]))
                                                for e in example["by_prob_increase"]]
                                               for example in record["examples"]]
    geometry = {key.removeprefix("geometry/"): value for key, value in tensors.items() if key.startswith("geometry/")}
    for when in ("start", "end"):
        geometry[f"{when}/preferred_norm_minus_projection_coef"] = (geometry[f"{when}/preferred_norm"]
                                                                    - geometry[f"{when}/projection_coef"])
    losses = tensors.get("losses")
    return RunArrays(name, tensors["steps"], tensors["preferred_logprobs"],
                     losses.mean(axis=1) if losses is not None else np.zeros(len(tensors["steps"])), num_steps,
                     tensors["per_example/example_ids"], tensors["hidden/norms"],
                     tensors.get("hidden/distances", np.full_like(tensors["hidden/norms"], np.nan)), geometry,
                     top_tokens)


def decrease_flags(values: np.ndarray) -> np.ndarray:
    """(T, N) trajectory -> (T-1, N) bool, row t-1: values[t] < values[t-1]. Example: [.5, .45, .6] -> [T, F]."""
    return values[1:] < values[:-1]


def loss_fell_flags(mean_losses: np.ndarray) -> np.ndarray:
    """(T,) losses -> (T-1,) bool, entry t-1: loss[t] <= loss[t-1] (the reference's "did train loss decrease")."""
    return mean_losses[1:] <= mean_losses[:-1]


def first_decrease_indices(flags: np.ndarray) -> np.ndarray:
    """(T-1, N) decrease flags -> index of the first decrease of each example that has one (examples without one
    are left out). Example: columns [F, T, T] and [F, F, F] -> [1]."""
    has = flags.any(axis=0)
    return flags.argmax(axis=0)[has]


def lower_median(values: np.ndarray) -> float:
    """torch.median's median: the lower of the two middle values for an even count. Example: [4, 1, 3, 2] -> 2."""
    ordered = np.sort(values)
    return float(ordered[(len(ordered) - 1) // 2])


def largest_decrease_interval(values: np.ndarray) -> tuple[int, int]:
    """(start, end) with start <= end maximising values[start] - values[end], first in order of end then start
    (no decrease: (0, 0)). Example: [.5, .7, .2, .6, .1] -> (1, 4): 0.7 - 0.1."""
    best, best_pair = -math.inf, (0, 0)
    for end in range(len(values)):
        for start in range(end + 1):
            gap = values[start] - values[end]
            if gap > best:
                best, best_pair = gap, (start, end)
    return best_pair


def top_token_table(examples: list[list[tuple[int, str, float]]], k: int, num_examples: int) -> list[dict]:
    """Pool the k first entries of each example's top-token list: per id its count, frequency (count /
    num_examples) and mean increase, sorted by count (descending), ties by id. Example: lists [(7, a, .2),
    (9, b, .1)] and [(7, a, .4)] with k = 2 -> id 7: count 2, frequency 1.0, mean .3; id 9: count 1, .5, .1."""
    increases: dict[int, list[float]] = defaultdict(list)
    tokens: dict[int, str] = {}
    for entries in examples:
        for token_id, token, increase in entries[:k]:
            increases[token_id].append(increase)
            tokens[token_id] = token
    rows = [{"id": token_id, "token": tokens[token_id], "count": len(values), "frequency": len(values) / num_examples,
             "mean_increase": sum(values) / len(values)} for token_id, values in increases.items()]
    rows.sort(key=lambda row: (-row["count"], row["id"]))
    return rows[:TOKENS_TO_PRINT]


def reference_loss_increased(run: RunArrays) -> bool:
    """The reference filter: the mean training loss rose between two consecutive points 0..num_steps-1."""
    mask = run.steps <= run.num_steps - 1
    return bool((~loss_fell_flags(run.mean_losses[mask])).any())


def is_every_step_tracked(run: RunArrays, max_step: int) -> bool:
    """Whether the run has a point at every step 0..W (full-batch runs), as the reference statistics need."""
    last = min(max_step, run.num_steps - 1)
    window = run.steps[run.steps <= last]
    return len(window) == last + 1 and bool((window == np.arange(last + 1)).all())


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def reference_statistics(runs: list[RunArrays], max_step: int = REFERENCE_MAX_STEP) -> dict:
    """The reference printer's statistics over the examples of `runs` (already filtered; see module docstring)."""
    decreased, while_loss_fell, loss_increased, first_indices = [], [], [], []
    largest = {"logprob": [], "prob": []}
    per_example, hidden = [], {"initial_norm": [], "final_norm": [], "change_norm": []}
    for run in runs:
        window = run.steps <= min(max_step, run.num_steps - 1)
        logps = run.preferred_logprobs[window].astype(np.float64)  # (W+1, N)
        flags = decrease_flags(logps)
        loss_fell = loss_fell_flags(run.mean_losses[window])[:, None]
        decreased.extend(flags.any(axis=0).tolist())
        while_loss_fell.extend((flags & loss_fell).any(axis=0).tolist())
        loss_increased.extend([bool((~loss_fell).any())] * logps.shape[1])
        first_indices.extend(first_decrease_indices(flags).tolist())
        for index in range(logps.shape[1]):
            entry = {"run": run.name, "example_id": int(run.example_ids[index])}
            for kind, values in (("logprob", logps[:, index]), ("prob", np.exp(logps[:, index]))):
                start, end = largest_decrease_interval(values)
                row = {"start_step": start, "end_step": end, "start_value": float(values[start]),
                       "end_value": float(values[end]), "decrease": float(values[end] - values[start])}
                largest[kind].append(row)
                entry[kind] = row
            per_example.append(entry)
        last_forward = int(np.nonzero(run.steps == run.num_steps - 1)[0][0]) if run.num_steps - 1 in run.steps else -1
        hidden["initial_norm"].extend(run.hidden_norms[0].tolist())
        hidden["final_norm"].extend(run.hidden_norms[last_forward].tolist())
        hidden["change_norm"].extend(run.hidden_distances[last_forward].tolist())
    num_examples = len(decreased)
    first = np.asarray(first_indices)
    out: dict = {
        "max_step": max_step, "num_runs": len(runs), "num_examples": num_examples,
        "num_examples_preferred_decreased_at_some_step": int(sum(decreased)),
        "num_examples_preferred_decreased_while_loss_fell": int(sum(while_loss_fell)),
        "num_examples_loss_increased": int(sum(loss_increased)),
        "first_decrease_index": ({"min": int(first.min()), "max": int(first.max()), "median": lower_median(first),
                                  "mean": float(first.mean())} if first.size else
                                 {"min": -1, "max": -1, "median": -1.0, "mean": -1.0}),
        "per_example_largest_decrease": per_example,
    }
    for kind, rows in largest.items():
        out[f"largest_{kind}_decrease"] = {
            "mean": _mean([r["decrease"] for r in rows]), "start_value_mean": _mean([r["start_value"] for r in rows]),
            "end_value_mean": _mean([r["end_value"] for r in rows]),
            "start_step_mean": _mean([r["start_step"] for r in rows]),
            "end_step_mean": _mean([r["end_step"] for r in rows])}
    out["top_tokens_by_prob_increase"] = {}
    for step in REFERENCE_STEPS:
        lists = [example for run in runs if step in run.top_tokens and step <= min(max_step, run.num_steps - 1)
                 for example in run.top_tokens[step]]
        if lists:
            out["top_tokens_by_prob_increase"][f"step_{step}"] = {
                f"top_{k}": top_token_table(lists, k, num_examples) for k in REFERENCE_TOP_K}
    out["geometry"] = {key: {"initial": _mean(np.concatenate([run.geometry[f"start/{key}"] for run in runs])),
                             "final": _mean(np.concatenate([run.geometry[f"end/{key}"] for run in runs]))}
                       for key in GEOMETRY_ROWS} if runs else {}
    out["hidden"] = {f"{key}_mean": _mean(values) for key, values in hidden.items()}
    return out


def format_reference_block(stats: dict) -> list[str]:
    """Lines of the reference-definition block of one setting (see module docstring for each number)."""
    n = stats["num_examples"]
    first = stats["first_decrease_index"]
    lines = [f"   reference printer statistics (max_step {stats['max_step']}, {stats['num_runs']} runs, {n} examples):",
             f"     preferred prob decreased at some step: {stats['num_examples_preferred_decreased_at_some_step']} / {n}"
             f"; while the loss fell: {stats['num_examples_preferred_decreased_while_loss_fell']} / {n}"
             f"; loss increased: {stats['num_examples_loss_increased']} / {n}",
             f"     first decrease (reference index j: step j -> j+1): min {first['min']}, max {first['max']}, "
             f"median {first['median']:g}, mean {first['mean']:.4g}"]
    for kind, label in (("logprob", "log-prob"), ("prob", "prob")):
        row = stats[f"largest_{kind}_decrease"]
        lines.append(f"     largest {label} decrease: {row['mean']:.4g} ({row['start_value_mean']:.4g} -> "
                     f"{row['end_value_mean']:.4g}), mean steps {row['start_step_mean']:.4g} -> "
                     f"{row['end_step_mean']:.4g}")
    for step, tables in stats["top_tokens_by_prob_increase"].items():
        cells = []
        for k in REFERENCE_TOP_K:
            top = tables[f"top_{k}"][:3]
            cells.append(f"top-{k}: " + ", ".join(f"{row['token']!r} {row['count']}x ({row['frequency']:.2f}, "
                                                   f"+{row['mean_increase']:.3g})" for row in top))
        lines.append(f"     tokens up most at {step.replace('_', ' ')}: " + "; ".join(cells))
    geometry = stats["geometry"]
    if geometry:
        lines.append("     unembeddings initial/final: " + ", ".join(
            f"{key} {value['initial']:.4g}/{value['final']:.4g}" for key, value in geometry.items()))
    hidden = stats["hidden"]
    lines.append(f"     hidden norm initial {hidden['initial_norm_mean']:.4g}, final {hidden['final_norm_mean']:.4g}, "
                 f"change {hidden['change_norm_mean']:.4g}")
    return lines
