"""Section 3 of docs/REPRODUCTION.md: tables in the paper's layout and figures, drawn from the summary JSON
(`section3_report.collect_section3`), never from anything else.

Verdict rule (stated in the report): likelihood displacement is *reproduced* for a cell when the preferred
probability ends below its initial value in at least half of the cell's used runs; the finding is
"reproduced" when some cell of a close-unembedding or paper pair is, "partly" when only decreases at some step
(reference definition) occur, "not reproduced" otherwise, and "not run" without runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from reproduction.section3_report import PAIR_LABELS, START_LABELS
from reproduction.section3_plan import STARTS, TOKEN_PAIRS


SETUP_LINES = [
    "Setup (`reproduction/plans/section3_smollm2.json`, built by `python -m reproduction.section3_plan`): "
    "SmolLM2-135M-Instruct, fp32, CPU; persona prompts of ends-justify-means.jsonl chosen by the reference rule "
    "for the paper's ten seeds; one SFT stage as the reference's (all 1000 prompts, batch 32, 1 epoch, RMSprop lr "
    "1e-7; 'Absolutely' left out of the SFT tokens because it is two SmolLM2 tokens); DPO β 0.1 and IPO τ 0.01 on "
    "one prompt per run. Differences from the paper, for CPU time: 11 steps per run instead of 101, at 10× the "
    "paper's learning rates (DPO 1e-6, IPO 1e-7); the 'base model' start is the instruct model itself (SmolLM2's "
    "pretrained-only model is not available offline); the close-unembedding pairs 'No' vs 'no' and 'Yes' vs "
    "'yes' are added because they are the pairs that displace on this model (persona demo).",
    "",
    "Paper (Tables 1–3, OLMo-1B, Gemma-2B, Llama-3-8B): the preferred token's probability decreases (the tables "
    "list its mean decrease per model and pair), for DPO and IPO, from the SFT and the base models, and the mass "
    "can go to a token of opposite "
    "meaning (the paper's example: training to prefer 'No' over 'Never' sharply increases the probability of "
    "'Yes'). The reference printer's statistics below use the reference definitions "
    "(persona_experiments/reference_statistics.py) on points 0..10 of each run.",
    "",
]


def _pm(stat: dict, digits: str = ".3g") -> str:
    """'mean ± std' of a {'mean', 'std'} dict, '-' when undefined."""
    if stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:{digits}} ± {stat['std']:{digits}}"


def _num(value: float | None, digits: str = ".3f") -> str:
    return "-" if value is None else f"{value:{digits}}"


def cell_displaced(cell: dict) -> bool:
    """At least half of the used runs end with pi(y+) below its initial value."""
    return cell["num_used"] > 0 and 2 * cell["num_preferred_final_below_initial"] >= cell["num_used"]


def verdict(summary: dict) -> str:
    """'reproduced', 'partly', 'not reproduced' or 'not run' (rule in the module docstring), followed by the
    displaced cells and, for a partial plan, the run counts. Example: "reproduced ('No' vs 'no' DPO from the
    instruct model; partial: 12 / 121 runs)"."""
    cells = summary.get("cells", {})
    if not cells:
        return "not run"
    displaced = [key for key, cell in cells.items() if cell_displaced(cell)]
    if displaced:
        word = "reproduced"
    elif any(cell["reference_num_decreased_at_some_step"] > 0 for cell in cells.values()):
        word = "partly"
    else:
        word = "not reproduced"
    details = [", ".join(f"{PAIR_LABELS[key.split('/')[0]]} {START_LABELS[key.split('/')[1]]}" for key in displaced)]
    if summary["status"] != "complete":
        details.append(f"partial: {summary['num_done']} / {summary['num_expected']} runs")
    details = [detail for detail in details if detail]
    return word + (f" ({'; '.join(details)})" if details else "")


# The paper's tables: Table 1 = DPO after SFT, Table 2 = DPO from the base model, Table 3 = IPO after SFT.
PAPER_TABLES = (("Table 1 analogue", "dpo_post_sft"), ("Table 2 analogue", "dpo_base"),
                ("Table 3 analogue", "ipo_post_sft"))


def _top_cell(step: int | None, tokens: str) -> str:
    return f"step {step}: {tokens}" if tokens else "-"


def start_table(summary: dict, start: str) -> list[str]:
    """One of the paper's tables for one start: per pair, the preferred probability before/after, its largest
    decrease (mean ± std over runs), how many runs displaced, and the tokens whose probability rose most."""
    lines = ["| y+ vs y− | runs done / planned (used) | π(y+) initial | π(y+) final | largest decrease of π(y+) "
             "| Δ log π(y+) (nats) | π(y−) initial → final | fell at some step (ref.) | final < initial "
             "| tokens up most (reference top-1 by probability gain: count / prompts, mean gain) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in TOKEN_PAIRS:
        cell = summary["cells"].get(f"{pair}/{start}")
        if cell is None:
            planned = summary.get("num_seeds", "-")
            lines.append(f"| {PAIR_LABELS[pair]} | 0 / {planned} | not run yet |" + "  |" * 7)
            continue
        top = cell["reference_top_tokens"]
        tokens = ", ".join(f"`{row['token']!r}` {row['count']} / {cell['reference_num_examples']}, "
                           f"+{row['mean_increase']:.3g}" for row in top["rows"])
        lines.append(
            f"| {PAIR_LABELS[pair]} | {cell['num_done']} / {cell['num_expected']} ({cell['num_used']}) | "
            f"{_pm(cell['initial_preferred_prob'])} | {_pm(cell['final_preferred_prob'])} | "
            f"{_pm(cell['largest_preferred_prob_decrease'])} | {_pm(cell['preferred_logprob_change'])} | "
            f"{_num(cell['initial_dispreferred_prob']['mean'], '.3g')} → "
            f"{_num(cell['final_dispreferred_prob']['mean'], '.3g')} | "
            f"{cell['reference_num_decreased_at_some_step']} / {cell['reference_num_examples']} | "
            f"{cell['num_preferred_final_below_initial']} / {cell['num_used']} | "
            f"{_top_cell(top['step'], tokens)} |")
    return lines


def unembedding_table(summary: dict) -> list[str]:
    """Table 3 analogue: unembedding quantities of each pair at the start weights (instruct and SFT model)."""
    lines = ["| start weights | y+ vs y− | ‖W+‖ | ‖W−‖ | ⟨W+, W−⟩ | cos | ‖W+‖ − ⟨W+, W−⟩/‖W+‖ "
             "| displaced (≥ half of runs) |",
             "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for key, cell in summary["cells"].items():
        pair, start = key.split("/")
        weights = "SFT model" if STARTS[start][3] else "instruct model"
        if (weights, pair, STARTS[start][0]) in seen:
            continue
        seen.add((weights, pair, STARTS[start][0]))
        u = cell["unembedding"]
        lines.append(f"| {weights} ({STARTS[start][0].upper()}) | {PAIR_LABELS[pair]} | {_num(u['preferred_norm'])} | "
                     f"{_num(u['dispreferred_norm'])} | {_num(u['inner_product'])} | {_num(u['cosine'])} | "
                     f"{_num(u['preferred_norm_minus_projection_coef'])} | {'yes' if cell_displaced(cell) else 'no'} |")
    return lines


def plot_section3(summary: dict, figures_dir: Path) -> list[Path]:
    """section3_trajectories.png (exp of the mean over runs of log π(y+) solid, log π(y−) dashed, per step; one panel per start, one colour per
    pair) and section3_logprob_change.png (log π_final(y+) − log π_0(y+) in nats, mean ± std over runs, per pair
    and start; below 0 = the preferred token lost probability)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir.mkdir(parents=True, exist_ok=True)
    starts = [start for start in STARTS if any(key.endswith(f"/{start}") for key in summary["cells"])]
    figure, axes = plt.subplots(1, max(len(starts), 1), figsize=(5 * max(len(starts), 1), 3.8), squeeze=False)
    for axis, start in zip(axes.flat, starts):
        for index, pair in enumerate(TOKEN_PAIRS):
            cell = summary["cells"].get(f"{pair}/{start}")
            if not cell or not cell["trajectory"]["steps"]:
                continue
            trajectory, color = cell["trajectory"], f"C{index}"
            axis.plot(trajectory["steps"], [math.exp(v) for v in trajectory["preferred_logprob_mean"]], color=color,
                      label=f"{PAIR_LABELS[pair]} ({cell['num_used']} runs)")
            axis.plot(trajectory["steps"], [math.exp(v) for v in trajectory["dispreferred_logprob_mean"]],
                      color=color, linestyle="--")
        axis.set_title(START_LABELS[start], fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("geometric mean probability over runs\n(solid y+, dashed y−)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    trajectories = figures_dir / "section3_trajectories.png"
    figure.savefig(trajectories, dpi=90)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(len(starts), 1)
    for offset, start in enumerate(starts):
        means, stds, positions = [], [], []
        for index, pair in enumerate(TOKEN_PAIRS):
            cell = summary["cells"].get(f"{pair}/{start}")
            if cell and cell["preferred_logprob_change"]["mean"] is not None:
                positions.append(index + offset * width)
                means.append(cell["preferred_logprob_change"]["mean"])
                stds.append(cell["preferred_logprob_change"]["std"])
        axis.bar(positions, means, width, yerr=stds, capsize=3, label=START_LABELS[start])
    axis.set_xticks([index + width * (len(starts) - 1) / 2 for index in range(len(TOKEN_PAIRS))])
    axis.set_xticklabels([PAIR_LABELS[pair] for pair in TOKEN_PAIRS], fontsize=8)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_ylabel("Δ log π(y+) (nats; < 0: displaced)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7)
    figure.tight_layout()
    change = figures_dir / "section3_logprob_change.png"
    figure.savefig(change, dpi=90)
    plt.close(figure)
    return [trajectories, change]


def summary_lines(summary: dict) -> list[str]:
    """One sentence per start: in how many runs of each pair π(y+) ended below its start, and the mean change."""
    lines = []
    for _, start in PAPER_TABLES:
        parts = [f"{PAIR_LABELS[pair]} {cell['num_preferred_final_below_initial']} / {cell['num_used']} runs "
                 f"(Δ log π(y+) {_pm(cell['preferred_logprob_change'])})"
                 for pair in TOKEN_PAIRS if (cell := summary["cells"].get(f"{pair}/{start}"))]
        if parts:
            lines.append(f"- {START_LABELS[start]}: π(y+) ended below its start for " + "; ".join(parts) + ".")
    return lines + ([""] if lines else [])


def run_lines(summary: dict) -> list[str]:
    """How to run the section, and the wall time its finished runs took here (status.json)."""
    seconds = summary.get("wall_seconds", {})
    single = seconds.get("all", 0.0) - seconds.get("sft", 0.0)
    single_runs = summary["num_done"] - (1 if summary["sft"]["done"] else 0)
    measured = (f"Measured here (2 CPU cores shared with other jobs, OMP_NUM_THREADS=1): {single / 60:.1f} min for "
                f"{single_runs} single-prompt runs ({single / max(single_runs, 1):.0f} s each)"
                + (f", {seconds['sft'] / 60:.1f} min for the SFT stage" if summary["sft"]["done"] else "") + ".")
    return ["Run (resumable; a rerun skips finished runs), then regenerate this report:", "", "```bash",
            "OMP_NUM_THREADS=1 LD_DATA_DIR=/path/to/data nohup python "
            "persona_single_example_experiment_plan_runner.py \\",
            "    --plan_config_path reproduction/plans/section3_smollm2.json > section3.log 2>&1 &",
            "python -m reproduction.make_report --section3_dir outputs/reproduction/section3", "```", "",
            "Expected resources: about 1 h on 2 otherwise idle cores (bench/RESULTS.md: 1.2 s per SmolLM2 step, so "
            "about 18 s per 11-step run with its setup, 120 runs ≈ 36 min, plus the SFT stage ≈ 30 min); about 3 GB "
            "of memory (2.3 GB resident measured during the single-prompt runs), "
            "0.54 GB of disk for the SFT model. " + measured, ""]


def section3_markdown(summary: dict, figures_rel: str) -> list[str]:
    """The Section 3 part of the report."""
    lines = ["## Section 3: likelihood displacement on single prompts (Tables 1–3 analogue)", ""]
    if summary["status"] == "absent":
        return lines + [f"**Not run yet** (0 of {summary['num_expected']} runs found: {summary['reason']}).", ""]
    sft = summary["sft"]
    lines += [f"Runs found: **{summary['num_done']} of {summary['num_expected']}** planned "
              f"({summary['status']}); SFT stage: " + (
                  f"done (mean π(y+) over its {sft['num_examples']} prompts {sft['initial_preferred_prob']:.3g} → "
                  f"{sft['final_preferred_prob']:.3g})" if sft["done"] else
                  "not finished, so no post-SFT runs yet") + ".",
              f"Verdict (rule: π(y+) ends below its start in ≥ half of a cell's runs): **{verdict(summary)}**.", ""]
    lines += summary_lines(summary) + SETUP_LINES + run_lines(summary)
    for note in summary["notes"]:
        lines.append(f"- note: {note}")
    for title, start in PAPER_TABLES:
        lines += ["", f"{title}: {START_LABELS[start]} (the preferred token's probability, mean ± std over runs, "
                  "one prompt per run).", ""]
        lines += start_table(summary, start)
    lines += ["", "Unembedding geometry of each pair (initial weights of the run's start; the paper's Theorem: "
              "displacement is likelier the larger ⟨W+, W−⟩ is relative to ‖W+‖², i.e. the smaller "
              "‖W+‖ − ⟨W+, W−⟩/‖W+‖).", ""]
    lines += unembedding_table(summary)
    lines += ["", f"![preferred and dispreferred probability per step]({figures_rel}/section3_trajectories.png)", "",
              f"![change of the preferred log-probability]({figures_rel}/section3_logprob_change.png)", ""]
    return lines
