"""The reproduction report generator on a tiny finished Section 3 plan (tiny-gpt2, 2 seeds, 3 steps), built here
through the real runner, so `python -m reproduction.make_report` cannot rot; plus the verdict rule and the plan
builders' committed JSON."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.io_utils import read_json
from common.runner import main as run_plan
from persona_experiments.trainer import FAMILY
from reproduction import dataset_level_plans, section3_plan
from reproduction.make_report import main as report_main
from reproduction.section3_markdown import cell_displaced, verdict
from tests.conftest import DEMO_PERSONA_DATASET

SEEDS = [1, 2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_section3(tmp_path_factory) -> Path:
    """Outputs dir of the Section 3 plan on tiny-gpt2 (same builder as the committed plan): 4 pairs x 3 starts x
    2 seeds + 1 SFT = 25 runs, 3 steps each."""
    root = tmp_path_factory.mktemp("section3")
    plan = section3_plan.build_plan(model="tiny-gpt2", outputs_dir=str(root / "out"), dataset=DEMO_PERSONA_DATASET,
                                    seeds=SEEDS, steps=3)
    for configuration in plan["configurations"]:
        configuration["base_config"]["save_metric_plots"] = False
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan))
    assert run_plan(FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    return root / "out"


def _report(tmp_path: Path, section3_dir: Path, *extra: str) -> tuple[int, Path, Path]:
    report, figures = tmp_path / "docs" / "REPRODUCTION.md", tmp_path / "docs" / "reproduction"
    code = report_main(["--section3_dir", str(section3_dir), "--section5_dir", str(tmp_path / "no5"),
                        "--section6_dir", str(tmp_path / "no6"), "--num_seeds", str(len(SEEDS)),
                        "--report", str(report), "--figures_dir", str(figures), *extra])
    return code, report, figures


def test_report_numbers_come_from_the_runs(tiny_section3, tmp_path):
    code, report, figures = _report(tmp_path, tiny_section3)
    assert code == 0
    summary = read_json(figures / "section3_summary.json")
    assert summary["status"] == "complete" and (summary["num_done"], summary["num_expected"]) == (25, 25)
    assert summary["sft"]["done"] and summary["sft"]["num_examples"] == 20
    assert len(summary["cells"]) == 12
    cell = summary["cells"]["no_vs_lower_no/dpo_base"]
    runs = [read_json(tiny_section3 / f"no_vs_lower_no_dpo_base_s{seed}" / "summary.json") for seed in SEEDS]
    assert cell["preferred_tokens"] == ["No"] and cell["dispreferred_tokens"] == ["no"]
    initial = [run["initial_preferred_prob_mean"] for run in runs]
    assert cell["initial_preferred_prob"]["mean"] == pytest.approx(sum(initial) / 2)
    assert cell["initial_preferred_prob"]["std"] == pytest.approx(abs(initial[0] - initial[1]) / 2)
    assert cell["num_preferred_final_below_initial"] == sum(
        run["final_preferred_prob_mean"] < run["initial_preferred_prob_mean"] for run in runs)
    assert cell["trajectory"]["steps"] == [0, 1, 2, 3]
    # post-SFT runs start from the SFT model: same prompt, different initial probability than the instruct start
    after_sft = summary["cells"]["no_vs_lower_no/dpo_post_sft"]
    assert after_sft["initial_preferred_prob"]["mean"] != cell["initial_preferred_prob"]["mean"]
    text = report.read_text(encoding="utf-8")
    assert "Runs found: **25 of 25** planned (complete)" in text
    assert "Table 2 analogue: DPO from the instruct model" in text
    assert f"'No' vs 'no' {cell['num_preferred_final_below_initial']} / 2 runs (Δ log π(y+) " in text
    assert f"| 'No' vs 'no' | 2 / 2 ({cell['num_used']}) | {cell['initial_preferred_prob']['mean']:.3g} ± " in text
    assert "**Not run yet**: 0 of 48 planned runs" in text and "**Not run yet**: 0 of 9 planned runs" in text
    for name in ("section3_trajectories.png", "section3_logprob_change.png"):
        assert (figures / name).read_bytes()[:8] == PNG_MAGIC
        assert f"(reproduction/{name})" in text


def test_partial_and_absent_sections_are_stated(tiny_section3, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_section3, partial)
    status_path = partial / "yes_vs_no_ipo_post_sft_s2" / "status.json"
    status_path.write_text(json.dumps({**read_json(status_path), "status": "running"}))
    code, report, figures = _report(tmp_path, partial)
    assert code == 0
    text = report.read_text(encoding="utf-8")
    assert "Runs found: **24 of 25** planned (partial)" in text and "partial: 24 / 25 runs" in text
    table3 = text[text.index("Table 3 analogue"):]
    assert "| 'Yes' vs 'No' | 1 / 2 (" in table3
    code, report, figures = _report(tmp_path, tmp_path / "missing")
    assert code == 0
    assert "**Not run yet** (0 of 25 runs found" in report.read_text(encoding="utf-8")
    assert read_json(figures / "section3_summary.json")["status"] == "absent"


def test_bad_input_exits_2(tmp_path, capsys):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert _report(tmp_path, not_a_dir)[0] == 2
    assert "error: --section3_dir" in capsys.readouterr().err
    assert _report(tmp_path, tmp_path, "--num_seeds", "0")[0] == 2


def _cell(used: int, fell: int, decreased_at_some_step: int) -> dict:
    return {"num_used": used, "num_preferred_final_below_initial": fell,
            "reference_num_decreased_at_some_step": decreased_at_some_step}


def test_verdict_rule():
    assert cell_displaced(_cell(10, 5, 5))
    assert not cell_displaced(_cell(10, 4, 10)) and not cell_displaced(_cell(0, 0, 0))
    complete = {"status": "complete", "num_done": 3, "num_expected": 3}
    assert verdict({**complete, "cells": {}}) == "not run"
    assert verdict({**complete, "cells": {"no_vs_lower_no/dpo_base": _cell(2, 1, 2),
                                          "yes_vs_no/dpo_base": _cell(2, 0, 0)}}) == (
        "reproduced ('No' vs 'no' DPO from the instruct model)")
    assert verdict({**complete, "cells": {"yes_vs_no/dpo_base": _cell(2, 0, 1)}}) == "partly"
    assert verdict({"status": "partial", "num_done": 1, "num_expected": 3,
                    "cells": {"yes_vs_no/dpo_base": _cell(1, 0, 0)}}) == "not reproduced (partial: 1 / 3 runs)"


def test_committed_plans_match_their_builders():
    assert section3_plan.main(["--check"]) == 0
    assert dataset_level_plans.main(["--check"]) == 0
    plan = section3_plan.build_plan()
    runs = sum(math.prod(len(v) for v in c.get("options", {}).values()) for c in plan["configurations"])
    assert runs == 121


def test_average_ranks_and_spearman():
    from reproduction.section5_report import average_ranks, spearman

    assert average_ranks(np.array([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])) == pytest.approx(-0.5)
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))
    assert math.isnan(spearman(np.array([1.0, 1.0]), np.array([2.0, 3.0])))


def _write_section5_runs(root: Path) -> Path:
    """A similarity file (3 scored rows, row 9 skipped) and two finished runs by hand: a window run and a random one."""
    import torch
    from safetensors.torch import save_file

    from ches.results_file import LENGTH_NAMES, MEASURE_NAMES

    similarity = root / "similarity.pt"
    # row 9 was skipped by the scoring script: left out of the score arrays, recorded apart
    scores = {"ches_scores": [0.1, 0.4, 0.3]}
    results = {"settings": {"complete": True}, "sample_indices": torch.tensor([5, 7, 11]),
               "skipped_sample_indices": torch.tensor([9]), "skip_reasons": ["too long"]}
    results.update({name: torch.tensor(scores.get(name, [1.0, 2.0, 3.0]), dtype=torch.float64)
                    for name in MEASURE_NAMES})
    results.update({name: torch.tensor([3, 4, 5]) for name in LENGTH_NAMES})
    torch.save(results, similarity)
    outputs = root / "section5"
    window, random_run = outputs / "uf_ches_scores_q0-0_seed0", outputs / "uf_random128_seed0"
    for run_dir, config, summary in (
            (window, {"model": "tiny-gpt2", "objective": "dpo", "pref_similarity_measure": "ches_scores",
                      "quantile": 0.0, "similarity_results_path": str(similarity)},
             {"eval_metrics/train/preferred_logprobs_change_mean": -0.25}),
            (random_run, {"model": "tiny-gpt2", "objective": "dpo", "similarity_results_path": None}, {})):
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "status.json").write_text(json.dumps({"status": "done"}))
    save_file({"per_example/example_ids": torch.tensor([11, 5, 7, 9]),
               "per_example/preferred_logprob_change": torch.tensor([-0.2, 0.5, -1.0, 0.0], dtype=torch.float64)},
              str(random_run / "displacement_train.safetensors"))
    return outputs


def test_section5_windows_and_per_example_correlation(tmp_path, tiny_section3):
    from reproduction.section5_report import collect_section5

    outputs = _write_section5_runs(tmp_path)
    summary = collect_section5(outputs)
    windows = [(row["measure"], row["quantile"], row["mean"]) for row in summary["windows"]]
    assert windows == [("ches_scores", 0.0, -0.25)]
    # rows 11, 5, 7 (row 9 has no score): CHES [0.3, 0.1, 0.4] vs change [-0.2, 0.5, -1.0]: ranks reversed
    ches = summary["correlations"]["ches_scores"]
    assert ches["mean"] == pytest.approx(-1.0) and ches["runs"][0]["num_pairs"] == 3
    # the other measures score rows 11, 5, 7 as [3, 1, 2]: rho -0.5, less negative than CHES
    assert summary["correlations"]["minus_normalized_edit_distances"]["mean"] == pytest.approx(-0.5)
    assert summary["verdict"] == "reproduced"
    code = report_main(["--section3_dir", str(tiny_section3), "--section5_dir", str(outputs), "--section6_dir",
                        str(tmp_path / "none"), "--num_seeds", "2", "--report", str(tmp_path / "R.md"),
                        "--figures_dir", str(tmp_path / "fig")])
    assert code == 0
    text = (tmp_path / "R.md").read_text(encoding="utf-8")
    assert "**Runs found: 2 of 48**" in text and "| ches_scores | -1.000 ± 0.000 | 3 |" in text
    assert (tmp_path / "fig" / "section5_quantiles.png").read_bytes()[:8] == PNG_MAGIC
    assert read_json(tmp_path / "fig" / "section5_summary.json")["num_random_subset_runs"] == 1


def test_section5_verdict_rule():
    from reproduction.section5_report import verdict

    def rhos(ches, edit, hidden):
        return {"ches_scores": {"mean": ches}, "minus_normalized_edit_distances": {"mean": edit},
                "last_hidden_embedding_inner_prods": {"mean": hidden}}

    assert verdict({}) == "not run"
    assert verdict(rhos(-0.4, -0.1, 0.2)) == "reproduced"
    assert verdict(rhos(-0.4, -0.5, 0.2)) == "partly"
    assert verdict(rhos(0.1, -0.5, 0.2)) == "not reproduced"
    assert verdict(rhos(-0.4, None, 0.2)) == "partly"  # edit distance has no correlation: not compared


def test_wilson_interval():
    from reproduction.section6_report import wilson_interval

    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.40383, abs=1e-5), pytest.approx(0.59617, abs=1e-5))
    low, high = wilson_interval(0.0, 10)  # 0 of 10: [0, z^2 / (n + z^2)] = [0, 0.27753]
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.27753, abs=1e-5)


def _write_refusal_rates(path: Path, test_rate: float, num: int) -> None:
    path.mkdir(parents=True)
    entry = {"refusal_rate": test_rate, "num_scored": num, "num_responses": num, "num_unknown": 0}
    train = {**entry, "refusal_rate": min(1.0, test_rate + 0.05), "num_scored": 4 * num, "num_responses": 4 * num}
    (path / "refusal_rates.json").write_text(json.dumps({"overall": entry, "per_split": {"test": entry,
                                                                                          "train": train}}))


def test_section6_refusal_rates_and_verdict(tmp_path, tiny_section3):
    from reproduction.section6_report import collect_section6

    outputs = tmp_path / "section6"
    for name, after, before in (("dpo_plain", 0.2, 0.8), ("dpo_ln_ches_lowest16", 0.75, None)):
        (outputs / name).mkdir(parents=True)
        (outputs / name / "status.json").write_text(json.dumps({"status": "done"}))
        _write_refusal_rates(outputs / name / "refusal_eval", after, 100)
        if before is not None:
            _write_refusal_rates(outputs / name / "refusal_eval_initial", before, 100)
    data_dir = tmp_path / "prefs"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps({
        "model": "sft_model", "num_train": 10, "num_test": 2, "initial_refusal_rate": 0.625,
        "pair_type_counts": {"refusal-refusal": 3, "refusal-compliance": 7}}))
    (outputs / "dpo_plain" / "config.json").write_text(json.dumps({"model": "tiny-gpt2",
                                                                   "dataset": str(data_dir / "train.jsonl")}))
    (outputs / "dpo_plain" / "summary.json").write_text(json.dumps({
        "num_train_pairs": 64, "eval_metrics/train/preferred_logprobs_change_mean": -1.234,
        "eval_metrics/train/frac_preferred_logprobs_decreased": 0.75}))
    summary = collect_section6(outputs)
    assert summary["model"] == "tiny-gpt2" and summary["preference_data"]["num_train"] == 10
    assert summary["verdict"] == "reproduced"
    plain = summary["runs"]["dpo_plain"]
    assert plain["after"]["test"]["ci"][1] < plain["before"]["test"]["ci"][0]
    code = report_main(["--section3_dir", str(tiny_section3), "--section5_dir", str(tmp_path / "none"),
                        "--section6_dir", str(outputs), "--num_seeds", "2", "--report", str(tmp_path / "R.md"),
                        "--figures_dir", str(tmp_path / "fig")])
    assert code == 0
    text = (tmp_path / "R.md").read_text(encoding="utf-8")
    assert "**Runs found: 2 of 9**" in text
    assert ("| DPO | 85.0% [81.2%, 88.2%] (n=400) | 80.0% [71.1%, 86.7%] (n=100) | 25.0% [21.0%, 29.5%] (n=400) | "
            "20.0% [13.3%, 28.9%] (n=100) | 64 | -1.23 | 75% |") in text
    assert "2 finished runs; train-split refusal rate 85.0% before; after: DPO 25.0% |" in text  # the headline
    assert ("Here plain DPO moved the train-split refusal rate from 85.0% to 25.0% (lower: 95% intervals). 7 of the "
            "10 generated pairs (70%) prefer a refusal to a compliance, a direct pull toward refusing; π(y+) fell on "
            "75% (mean Δ log π(y+) -1.23 nats) of plain DPO's training pairs.") in text
    assert ("Preference data generated from `sft_model` (10 train / 2 test pairs): 7 refusal-compliance, "
            "3 refusal-refusal (chosen, rejected); refusal rate of its sampled responses 62.5%.") in text
    assert (tmp_path / "fig" / "section6_refusal_rates.png").read_bytes()[:8] == PNG_MAGIC


def test_section6_verdict_reads_the_train_split():
    from reproduction.section6_report import verdict

    def rates(train: float, test: float) -> dict:
        # intervals written by hand: only their ends matter to the rule
        return {"train": {"ci": [train - 0.04, train + 0.04]}, "test": {"ci": [test - 0.1, test + 0.1]}}

    runs = {"dpo_plain": {"before": rates(0.85, 0.9), "after": rates(0.3, 0.85)},
            "dpo_ln_ches_lowest16": {"after": rates(0.84, 0.9)}}
    assert verdict(runs) == "reproduced"  # train: 0.34 < 0.81 dropped; 0.88 >= 0.81 kept
    assert verdict(runs, split="test") == "not reproduced"  # test: 0.95 >= 0.8, no drop
    runs["dpo_ln_ches_lowest16"]["after"] = rates(0.5, 0.5)
    assert verdict(runs) == "partly"
    assert verdict({"dpo_plain": {"before": {"test": {"ci": [0.1, 0.2]}}, "after": rates(0.3, 0.3)}}) == "not run"
    # another plain run is judged against dpo_plain's measurement before training (the same starting model)
    runs["dpo_plain_all_pairs"] = {"before": None, "after": rates(0.9, 0.9)}
    assert verdict(runs, plain_run="dpo_plain_all_pairs") == "not reproduced"
    assert verdict(runs, plain_run="dpo_missing") == "not run"


def test_section6_figure_draws_rates_of_zero_and_one(tmp_path):
    from reproduction.section6_report import plot_section6, wilson_interval

    def rates(rate: float, num: int) -> dict:
        return {"rate": rate, "num_scored": num, "num_unknown": 0, "ci": list(wilson_interval(rate, num))}

    assert wilson_interval(1.0, 67)[1] < 1.0  # round-off: the upper end falls a hair below the rate
    summary = {"model": "m", "runs": {"dpo_plain": {"before": {"train": rates(0.9, 383), "test": rates(1.0, 67)},
                                                    "after": {"train": rates(0.0, 383), "test": rates(1.0, 67)}}}}
    path = plot_section6(summary, tmp_path)
    assert path == tmp_path / "section6_refusal_rates.png" and path.read_bytes()[:8] == PNG_MAGIC


def test_section6_per_pair_correlations_match_by_dataset_row(tmp_path):
    import torch
    from safetensors.numpy import save_file

    from reproduction.section6_report import per_example_correlations

    similarity = tmp_path / "results_samples.pt"
    torch.save({"sample_indices": torch.tensor([5, 3, 9, 1]),  # dataset rows, not in order
                "ches_scores": torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64),
                "ln_ches_scores": torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
                "minus_normalized_edit_distances": torch.zeros(4, dtype=torch.float64),
                "last_hidden_embedding_inner_prods": torch.zeros(4, dtype=torch.float64)}, similarity)
    run_dir = tmp_path / "dpo_refusal_refusal_pairs"
    run_dir.mkdir()
    # rows 1, 3, 5 trained (row 9 not): changes -1, -2, -3 -> CHES of rows 1/3/5 = 1/3/4, LN-CHES 4/2/1
    save_file({"per_example/example_ids": np.array([1, 3, 5]),
               "per_example/preferred_logprob_change": np.array([-1.0, -2.0, -3.0])},
              str(run_dir / "displacement_train.safetensors"))
    result = per_example_correlations(tmp_path, {"dpo_refusal_refusal_pairs": {}}, str(similarity))
    assert result["dpo_refusal_refusal_pairs"]["ches_scores"] == {"rho": pytest.approx(-1.0), "num_pairs": 3}
    assert result["dpo_refusal_refusal_pairs"]["ln_ches_scores"]["rho"] == pytest.approx(1.0)
    assert per_example_correlations(tmp_path, {"dpo_refusal_refusal_pairs": {}}, str(tmp_path / "missing.pt")) == {}


def test_section5_reading_and_evidence_read_the_summary():
    from reproduction.section5_report import section5_evidence, section5_reading

    def window(measure: str, quantile: float, mean: float, fell: float) -> dict:
        return {"measure": measure, "quantile": quantile, "mean": mean, "frac_preferred_decreased_mean": fell}

    summary = {"windows": [window("ches_scores", 0.0, 2.0, 0.0), window("ches_scores", 1.0, -0.5, 0.75),
                           window("minus_normalized_edit_distances", 0.0, 1.0, 0.25)],
               "correlations": {"ches_scores": {"mean": -0.5}, "last_hidden_embedding_inner_prods": {"mean": 0.25},
                                "minus_normalized_edit_distances": {"mean": None}},
               "num_random_subset_runs": 3}
    (text, blank) = section5_reading(summary)
    assert blank == "" and ("Here the mean Δ log π(y+) is positive in 2 of 3 windows and π(y+) fell for at most 75% "
                            "of a window's pairs. CHES") in text  # not every window rose: no "sizes of increase"
    assert "CHES windows from quantile 0 to 1: +2.00, -0.50 nats." in text
    assert text.endswith("is ches_scores (-0.50), then last_hidden_embedding_inner_prods (+0.25).")
    assert section5_evidence(summary) == ("mean per-pair ρ with Δ log π(y+) (3 random-subset runs): ches_scores "
                                          "-0.50, last_hidden_embedding_inner_prods +0.25")
