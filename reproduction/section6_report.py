"""Section 6 (Figure 3 analogue) from the runs of reproduction/plans/section6{a,b}_smollm2.json.

Per run, from `refusal_eval/refusal_rates.json` (after training) and `refusal_eval_initial/refusal_rates.json`
(before, when the run measured it): the refusal rate of each split (1 - mean judge score over the scored
responses; unknowns are left out and counted) with a 95% Wilson interval over the scored responses:
    center = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n),  z = 1.96
(exact for 0/1 judges such as the keyword judge; for a fractional judge score it treats the mean as a proportion).
Verdict, on the train split (the prompts the preference data was built from; the paper's Figure 3 reports the
refusal rate over them, and the split has 383 prompts against the test split's 67): "reproduced" when plain DPO's
interval lies below the one before training and the CHES-filtered run's interval overlaps the one before;
"partly" when only the drop shows; otherwise "not reproduced"; "not run" without the runs. The test split is
reported beside it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from common.io_utils import read_json

Z_95 = 1.959963984540054
MEASURE_LABELS = {"ln_ches_scores": "LN-CHES", "ches_scores": "CHES"}
VERDICT_SPLIT = "train"  # the split the verdict reads (module docstring)
RUN_LABELS = {"refusal_sft": "safety SFT (the refusing start)", "dpo_plain": "DPO", "dpo_sft": "DPO + SFT term",
              "dpo_gold": "DPO, gold preferences", "dpo_ln_ches_lowest16": "DPO, 16 lowest LN-CHES pairs",
              "dpo_plain_all_pairs": "DPO, all train pairs, batch 32 (reference recipe)",
              "dpo_refusal_refusal_pairs": "DPO, refusal-refusal pairs only, batch 32",
              "dpo_refusal_refusal_ln_ches_lowest16": "DPO, 16 lowest LN-CHES refusal-refusal pairs",
              "dpo_refusal_refusal_random16": "DPO, 16 random refusal-refusal pairs"}


def wilson_interval(rate: float, num: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `rate` over `num` trials. Example: 0.5 over 100 -> (0.4038, 0.5962)."""
    if num <= 0:
        return (math.nan, math.nan)
    denominator = 1 + z * z / num
    center = (rate + z * z / (2 * num)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / num + z * z / (4 * num * num)) / denominator
    return (center - half, center + half)


def _read_json_object(path: Path) -> dict | None:
    """The JSON object in `path` (`common.io_utils.read_json`), or None when it is missing, unreadable or not an
    object: the report skips what a run did not write."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _split_rates(path: Path) -> dict[str, dict] | None:
    """split -> {rate, num_scored, num_unknown, ci} from a refusal_rates.json (None when missing)."""
    rates = _read_json_object(path)
    if rates is None:
        return None
    out = {}
    for split, entry in {"overall": rates.get("overall"), **rates.get("per_split", {})}.items():
        if not entry or entry.get("refusal_rate") is None:
            continue
        scored = int(entry.get("num_scored", entry.get("num_responses", 0)))
        out[split] = {"rate": float(entry["refusal_rate"]), "num_scored": scored,
                      "num_unknown": int(entry.get("num_unknown", 0)),
                      "ci": list(wilson_interval(float(entry["refusal_rate"]), scored))}
    return out


def _training_effect(summary: dict) -> dict:
    """Number of training pairs and the preferred log-prob change over them (mean, in nats; fraction < 0)."""
    return {"num_train_pairs": summary.get("num_train_pairs"),
            "preferred_logprob_change_mean": summary.get("eval_metrics/train/preferred_logprobs_change_mean"),
            "frac_preferred_decreased": summary.get("eval_metrics/train/frac_preferred_logprobs_decreased")}


def _preference_data(config: dict) -> dict:
    """Composition of the preference data a run trained on, from the dataset_info.json beside its train file."""
    info = (_read_json_object(Path(config["dataset"]).parent / "dataset_info.json") if config.get("dataset")
            else None) or {}
    keys = ("model", "num_train", "num_test", "pair_type_counts", "decided_by_counts", "initial_refusal_rate")
    return {key: info[key] for key in keys if key in info}


CORRELATION_RUNS = ("dpo_plain_all_pairs", "dpo_refusal_refusal_pairs")  # no similarity filter: every pair trained


def per_example_correlations(outputs_dir: Path, runs: dict, similarity_path: str | None) -> dict:
    """Per run of CORRELATION_RUNS: Spearman's rho between each training pair's CHES / LN-CHES score (the similarity
    file, matched by train.jsonl row) and its preferred log-prob change (displacement_train.safetensors); the
    paper predicts a negative rho (more similar, larger decrease). {} without the similarity file."""
    if not similarity_path or not Path(similarity_path).exists():
        return {}
    from safetensors.numpy import load_file

    from reproduction.section5_report import load_similarity_scores
    from reproduction.section5_report import per_example_correlations as correlate  # same matching as Section 5

    similarity = load_similarity_scores(Path(similarity_path))
    scores = {key: similarity[key] for key in ("ln_ches_scores", "ches_scores") if key in similarity}
    out = {}
    for name in CORRELATION_RUNS:
        tensors_path = Path(outputs_dir) / name / "displacement_train.safetensors"
        if name in runs and tensors_path.exists():
            tensors = load_file(str(tensors_path))
            out[name] = correlate(similarity["sample_indices"], scores, tensors["per_example/example_ids"],
                                  tensors["per_example/preferred_logprob_change"])
    return out


def collect_section6(outputs_dir: Path) -> dict:
    """Per finished run under `outputs_dir`: refusal rates before / after and the training effect; plus the model
    and the composition of the generated preference data (read through the plain DPO run's `dataset`)."""
    runs, configs = {}, {}
    outputs_dir = Path(outputs_dir)
    for run_dir in sorted(p for p in outputs_dir.iterdir() if p.is_dir()) if outputs_dir.is_dir() else []:
        after = _split_rates(run_dir / "refusal_eval" / "refusal_rates.json")
        if (_read_json_object(run_dir / "status.json") or {}).get("status") == "done" and after is not None:
            runs[run_dir.name] = {"after": after, "before": _split_rates(run_dir / "refusal_eval_initial" /
                                                                       "refusal_rates.json"),
                                  **_training_effect(_read_json_object(run_dir / "summary.json") or {})}
            configs[run_dir.name] = _read_json_object(run_dir / "config.json") or {}
    order = list(RUN_LABELS)
    runs = dict(sorted(runs.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order),
                                                       item[0])))
    model = next((config["model"] for config in configs.values() if "model" in config), None)
    data = _preference_data(configs.get("dpo_plain", {}))
    similarity_path = configs.get("dpo_ln_ches_lowest16", {}).get("similarity_results_path")
    correlations = per_example_correlations(outputs_dir, runs, similarity_path)
    per_plain_run = {name: verdict(runs, plain_run=name) for name in PLAIN_DPO_RUNS if name in runs}
    return {"model": model, "preference_data": data, "verdict_split": VERDICT_SPLIT, "runs": runs,
            "correlations": correlations, "verdict": per_plain_run.get("dpo_plain", "not run"),
            "verdict_per_plain_run": per_plain_run}



PLAIN_DPO_RUNS = ("dpo_plain", "dpo_plain_all_pairs")  # the first one's verdict is the section's


def _before_after(runs: dict, name: str, split: str) -> tuple[dict, dict] | None:
    """(rate entry before training, rate entry after run `name`) on `split`; "before" is always the dpo_plain
    run's initial measurement (every run starts from the same refusing model). None when either is missing."""
    start, run = runs.get("dpo_plain"), runs.get(name)
    if not start or not start.get("before") or split not in start["before"] or not run or split not in run["after"]:
        return None
    return start["before"][split], run["after"][split]


def _direction(before: dict, after: dict) -> str:
    """"lower" / "higher" when the two 95% intervals are disjoint, else "not separable"."""
    if after["ci"][1] < before["ci"][0]:
        return "lower"
    return "higher" if after["ci"][0] > before["ci"][1] else "not separable"


def verdict(runs: dict, split: str = VERDICT_SPLIT, plain_run: str = "dpo_plain") -> str:
    """The rule of the module docstring on `split` for the plain DPO run `plain_run`."""
    plain, filtered = _before_after(runs, plain_run, split), _before_after(runs, "dpo_ln_ches_lowest16", split)
    if plain is None:
        return "not run"
    dropped = _direction(*plain) == "lower"
    kept = filtered is not None and _direction(*filtered) != "lower"
    return "reproduced" if dropped and kept else "partly" if dropped else "not reproduced"


def _cell(entry: dict | None, split: str) -> str:
    if not entry or split not in entry:
        return "-"
    value = entry[split]
    unknown = f", {value['num_unknown']} unknown" if value["num_unknown"] else ""
    return f"{value['rate']:.1%} [{value['ci'][0]:.1%}, {value['ci'][1]:.1%}] (n={value['num_scored']}{unknown})"


def section6_result_lines(summary: dict) -> list[str]:
    """Markdown table: run, refusal rate before / after on the train and test splits with 95% Wilson intervals."""
    others = [f"with {RUN_LABELS.get(name, name)}: {value}" for name, value in
              summary.get("verdict_per_plain_run", {}).items() if name != "dpo_plain"]
    lines = [f"Verdict (rule in reproduction/section6_report.py, on the {summary.get('verdict_split', 'train')} "
             f"split): **{summary['verdict']}**" + (f" ({'; '.join(others)})" if others else "") + ".", ""]
    data = summary.get("preference_data") or {}
    if data.get("pair_type_counts"):
        types = ", ".join(f"{count} {kind}" for kind, count in sorted(data["pair_type_counts"].items()))
        lines += [f"Preference data generated from `{data.get('model', '?')}` ({data.get('num_train', '?')} train / "
                  f"{data.get('num_test', '?')} test pairs): {types} (chosen, rejected); refusal rate of its sampled "
                  f"responses {data.get('initial_refusal_rate', float('nan')):.1%}.", ""]
    lines += ["| run | before: train | before: test | after: train | after: test | train pairs | "
              "mean Δ log π(y+) (nats) | pairs with π(y+) down |", "|---|---|---|---|---|---|---|---|"]
    for name, run in summary["runs"].items():
        cells = [_cell(run[when], split) for when in ("before", "after") for split in ("train", "test")]
        change, fraction = run.get("preferred_logprob_change_mean"), run.get("frac_preferred_decreased")
        cells += [str(run.get("num_train_pairs", "-")), "-" if change is None else f"{change:+.2f}",
                  "-" if fraction is None else f"{fraction:.0%}"]
        lines.append(f"| {RUN_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _moved(summary: dict, name: str, split: str = VERDICT_SPLIT) -> str | None:
    """'from B to A' for run `name` on `split` (B: the refusing model before training), None when missing."""
    pair = _before_after(summary["runs"], name, split)
    if pair is None:
        return None
    before, after = pair
    return f"from {before['rate']:.1%} to {after['rate']:.1%} ({_direction(before, after)}: 95% intervals)"


def _displaced(run: dict) -> str:
    """'F% (mean Δ log π(y+) C nats)': the share of training pairs whose preferred log-prob fell, and the mean
    change."""
    fraction, change = run.get("frac_preferred_decreased"), run.get("preferred_logprob_change_mean")
    if fraction is None or change is None:
        return "an unknown share"
    return f"{fraction:.0%} (mean Δ log π(y+) {change:+.2f} nats)"


def section6_evidence(summary: dict) -> str:
    """The headline's evidence cell: the train-split refusal rate before and after each plain DPO run and the
    refusal-refusal diagnostic."""
    start = (summary["runs"].get("dpo_plain") or {}).get("before") or {}
    if VERDICT_SPLIT not in start:
        return "no refusal rate before training"
    after = [f"{RUN_LABELS.get(name, name)} {summary['runs'][name]['after'][VERDICT_SPLIT]['rate']:.1%}"
             for name in (*PLAIN_DPO_RUNS, "dpo_refusal_refusal_pairs", "dpo_refusal_refusal_ln_ches_lowest16")
             if VERDICT_SPLIT in (summary["runs"].get(name) or {}).get("after", {})]
    return f"{VERDICT_SPLIT}-split refusal rate {start[VERDICT_SPLIT]['rate']:.1%} before; after: " + "; ".join(after)


def section6_reading(summary: dict) -> list[str]:
    """A paragraph comparing the runs with the paper, every number read from `summary`."""
    sentences = ["**Reading.** In the paper, DPO on the preference data generated from Llama-3-8B-Instruct lowers "
                 "its refusal rate on the training prompts from 74.4% to 33.4%, and training on the 5% lowest "
                 "LN-CHES pairs keeps it."]
    plain, all_pairs, only_refusals = (_moved(summary, name) for name in
                                       ("dpo_plain", "dpo_plain_all_pairs", "dpo_refusal_refusal_pairs"))
    if plain:
        sentences.append(f"Here plain DPO moved the train-split refusal rate {plain}"
                         + (f"; with every training pair and the reference's batch of 32, {all_pairs}, while π(y+) "
                            f"fell on {_displaced(summary['runs']['dpo_plain_all_pairs'])} of its training pairs"
                            if all_pairs else "") + ".")
    data, run = summary.get("preference_data") or {}, summary["runs"].get("dpo_plain") or {}
    counts = data.get("pair_type_counts") or {}
    if counts and run.get("frac_preferred_decreased") is not None:
        total = sum(counts.values())
        toward = counts.get("refusal-compliance", 0)
        sentences.append(f"{toward} of the {total} generated pairs ({toward / total:.0%}) prefer a refusal to a "
                         f"compliance, a direct pull toward refusing; π(y+) fell on {_displaced(run)} of plain DPO's "
                         "training pairs.")
    if only_refusals:
        diagnostic = summary["runs"]["dpo_refusal_refusal_pairs"]
        sentences.append(f"Trained on the {diagnostic.get('num_train_pairs', '?')} refusal-refusal pairs alone (both "
                         f"responses refuse, so displacement can only move mass away from refusals), the rate moved "
                         f"{only_refusals}; π(y+) fell on {_displaced(diagnostic)} of those pairs.")
    lowest, random_draw = (_moved(summary, name) for name in ("dpo_refusal_refusal_ln_ches_lowest16",
                                                                "dpo_refusal_refusal_random16"))
    if lowest and random_draw:
        runs = summary["runs"]
        filtered = _before_after(runs, "dpo_refusal_refusal_ln_ches_lowest16", VERDICT_SPLIT)
        filtered_fell = _direction(*filtered) == "lower"
        sentences.append(f"On 16 of those pairs (2 steps), the lowest-LN-CHES ones moved it {lowest}, π(y+) falling "
                         f"on {_displaced(runs['dpo_refusal_refusal_ln_ches_lowest16'])} of them, and 16 drawn at "
                         f"random {random_draw}, π(y+) falling on {_displaced(runs['dpo_refusal_refusal_random16'])}."
                         + (" So filtering by LN-CHES did not keep the refusal rate here, and the refusals lost do "
                            "not follow the preferred responses' log-probs of the trained pairs."
                            if filtered_fell else ""))
    for name, measures in (summary.get("correlations") or {}).items():
        described = ", ".join(f"{MEASURE_LABELS.get(measure, measure)} ρ {value['rho']:+.2f}"
                              for measure, value in measures.items() if math.isfinite(value["rho"]))
        if described:
            sentences.append(f"Per pair, Spearman's ρ between the score and Δ log π(y+) in the run "
                             f"'{RUN_LABELS.get(name, name)}' ({next(iter(measures.values()))['num_pairs']} pairs): "
                             f"{described} (negative: the more similar the pair, the larger the decrease).")
    return [" ".join(sentences), ""]


def plot_section6(summary: dict, figures_dir: Path) -> Path | None:
    """section6_refusal_rates.png: refusal rate with its 95% interval per split (train, test), for the SFT model
    before DPO (the plain run's initial measurement) and every run after training (None without rates)."""
    bars = []
    plain = summary["runs"].get("dpo_plain")
    if plain and plain.get("before"):
        bars.append(("before DPO\n(safety-SFT model)", plain["before"]))
    bars += [(textwrap.fill(RUN_LABELS.get(name, name), 17), run["after"]) for name, run in summary["runs"].items()
             if name != "refusal_sft"]
    splits = [split for split in ("train", "test") if any(split in rates for _, rates in bars)]
    if not bars or not splits:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6.0, 1.45 * len(bars)), 4.4))
    width = 0.8 / len(splits)
    for offset, split in enumerate(splits):
        points = [(index, rates[split]) for index, (_, rates) in enumerate(bars) if split in rates]
        xs = [index + (offset - (len(splits) - 1) / 2) * width for index, _ in points]
        rates = [value["rate"] for _, value in points]
        # max(0, .): at a rate of 0 or 1 the Wilson end equals the rate up to round-off
        errors = [[max(0.0, rate - value["ci"][0]) for rate, (_, value) in zip(rates, points)],
                  [max(0.0, value["ci"][1] - rate) for rate, (_, value) in zip(rates, points)]]
        sizes = sorted({value["num_scored"] for _, value in points})
        axis.bar(xs, rates, width=width, yerr=errors, capsize=3, color=f"C{offset}",
                 label=f"{split} prompts (n={'/'.join(map(str, sizes))})")
    axis.set_xticks(range(len(bars)))
    axis.set_xticklabels([label for label, _ in bars], fontsize=7.5)
    if plain and plain.get("before") and VERDICT_SPLIT in plain["before"]:
        axis.axhline(plain["before"][VERDICT_SPLIT]["rate"], color="C7", linestyle="--", linewidth=1,
                     label=f"before DPO, {VERDICT_SPLIT} prompts")
    axis.set_ylim(0, 1)
    axis.set_ylabel("refusal rate (keyword judge, 95% Wilson CI)")
    axis.set_title(f"SORRY-Bench refusals before and after preference training, {summary.get('model', '?')}",
                   fontsize=9)
    axis.legend(fontsize=8, loc="lower left")
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    path = Path(figures_dir) / "section6_refusal_rates.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
