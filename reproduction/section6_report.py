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

import json
import math
from pathlib import Path

Z_95 = 1.959963984540054
VERDICT_SPLIT = "train"  # the split the verdict reads (module docstring)
RUN_LABELS = {"refusal_sft": "safety SFT (the refusing start)", "dpo_plain": "DPO", "dpo_sft": "DPO + SFT term",
              "dpo_gold": "DPO, gold preferences", "dpo_ln_ches_lowest16": "DPO, 16 lowest LN-CHES pairs"}


def wilson_interval(rate: float, num: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `rate` over `num` trials. Example: 0.5 over 100 -> (0.4038, 0.5962)."""
    if num <= 0:
        return (math.nan, math.nan)
    denominator = 1 + z * z / num
    center = (rate + z * z / (2 * num)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / num + z * z / (4 * num * num)) / denominator
    return (center - half, center + half)


def _split_rates(path: Path) -> dict[str, dict] | None:
    """split -> {rate, num_scored, num_unknown, ci} from a refusal_rates.json (None when missing)."""
    try:
        rates = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
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


def collect_section6(outputs_dir: Path) -> dict:
    """Refusal rates before / after of every finished run under `outputs_dir` (name -> entry)."""
    runs = {}
    outputs_dir = Path(outputs_dir)
    for run_dir in sorted(p for p in outputs_dir.iterdir() if p.is_dir()) if outputs_dir.is_dir() else []:
        try:
            status = json.loads((run_dir / "status.json").read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError):
            continue
        after = _split_rates(run_dir / "refusal_eval" / "refusal_rates.json")
        if status == "done" and after is not None:
            runs[run_dir.name] = {"after": after, "before": _split_rates(run_dir / "refusal_eval_initial" /
                                                                       "refusal_rates.json")}
    model = None
    if runs:
        try:
            model = json.loads((outputs_dir / next(iter(runs)) / "config.json").read_text(encoding="utf-8"))["model"]
        except (OSError, ValueError, KeyError):
            model = None
    return {"model": model, "verdict_split": VERDICT_SPLIT, "runs": runs, "verdict": verdict(runs)}



def verdict(runs: dict, split: str = VERDICT_SPLIT) -> str:
    """The rule of the module docstring on `split`; "before" = the plain DPO run's initial measurement."""
    plain, filtered = runs.get("dpo_plain"), runs.get("dpo_ln_ches_lowest16")
    if not plain or not plain.get("before") or split not in plain["before"] or split not in plain["after"]:
        return "not run"
    before = plain["before"][split]["ci"]
    dropped = plain["after"][split]["ci"][1] < before[0]
    kept = bool(filtered) and split in filtered["after"] and filtered["after"][split]["ci"][1] >= before[0]
    return "reproduced" if dropped and kept else "partly" if dropped else "not reproduced"


def _cell(entry: dict | None, split: str) -> str:
    if not entry or split not in entry:
        return "-"
    value = entry[split]
    unknown = f", {value['num_unknown']} unknown" if value["num_unknown"] else ""
    return f"{value['rate']:.1%} [{value['ci'][0]:.1%}, {value['ci'][1]:.1%}] (n={value['num_scored']}{unknown})"


def section6_result_lines(summary: dict) -> list[str]:
    """Markdown table: run, refusal rate before / after on the train and test splits with 95% Wilson intervals."""
    lines = [f"Verdict (rule in reproduction/section6_report.py): **{summary['verdict']}**.", "",
             "| run | before: train | before: test | after: train | after: test |", "|---|---|---|---|---|"]
    for name, run in summary["runs"].items():
        cells = [_cell(run[when], split) for when in ("before", "after") for split in ("train", "test")]
        lines.append(f"| {RUN_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_section6(summary: dict, figures_dir: Path) -> Path | None:
    """section6_refusal_rates.png: refusal rate with its 95% interval per split (train, test), for the SFT model
    before DPO (the plain run's initial measurement) and every run after training (None without rates)."""
    bars = []
    plain = summary["runs"].get("dpo_plain")
    if plain and plain.get("before"):
        bars.append(("before DPO\n(safety-SFT model)", plain["before"]))
    bars += [(RUN_LABELS.get(name, name).replace(", ", ",\n"), run["after"]) for name, run in summary["runs"].items()
             if name != "refusal_sft"]
    splits = [split for split in ("train", "test") if any(split in rates for _, rates in bars)]
    if not bars or not splits:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4))
    width = 0.8 / len(splits)
    for offset, split in enumerate(splits):
        points = [(index, rates[split]) for index, (_, rates) in enumerate(bars) if split in rates]
        xs = [index + (offset - (len(splits) - 1) / 2) * width for index, _ in points]
        rates = [value["rate"] for _, value in points]
        errors = [[rate - value["ci"][0] for rate, (_, value) in zip(rates, points)],
                  [value["ci"][1] - rate for rate, (_, value) in zip(rates, points)]]
        sizes = sorted({value["num_scored"] for _, value in points})
        axis.bar(xs, rates, width=width, yerr=errors, capsize=3, color=f"C{offset}",
                 label=f"{split} prompts (n={'/'.join(map(str, sizes))})")
    axis.set_xticks(range(len(bars)))
    axis.set_xticklabels([label for label, _ in bars], fontsize=8)
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
