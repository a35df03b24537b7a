"""Plots (issue 17 item 4) and the printers' family check: each figure is written from hand-made records in the real
schemas; statistics (Wilson bounds, Spearman's rho, mean band) against hand-computed values. The figures on real
tiny runs are written by the end-to-end tests of each family (runner, persona plan, similarity, SORRY-Bench, loss
comparison), which assert the PNGs too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import persona_single_example_results_printer as persona_printer
import preference_similarity_results_printer as similarity_printer
import sorrybench_results_printer as sorrybench_printer
from common.metrics_logger import MetricsLogger
from common.plots import (LOGPROB_PANEL, OTHER_FILE, OVERVIEW_FILE, PROBABILITY_PANEL, is_constant, load_curves,
                          matching_keys, new_figure, overview_layout, plot_mean_band, plot_run_overview,
                          uses_probabilities)
from common.run_family import family_of_config, other_family_error
from loss_comparison_results_printer import plot_sections
from preference_similarity.plots import ExampleGroup, figure_2, similarity_examples, spearman


def write_run(run_dir: Path, config: dict, summary: dict, metrics: list[dict] | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "done"}))
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in metrics))
    return run_dir


def persona_metrics(preferred: list[float], dispreferred: list[float]) -> list[dict]:
    """metrics.jsonl records of a persona run: log-probs per step (nats), a constant lr, a 0/1 accuracy."""
    return [{"step": step, "loss": 0.69 - 0.01 * step, "lr": 1e-3, "rewards/accuracies": float(step > 0),
             "rewards/margins": 0.1 * step, "displacement/preferred_logprob_mean": p,
             "displacement/dispreferred_logprob_mean": d, "displacement/preferred_prob_mean": math.exp(p),
             "displacement/dispreferred_prob_mean": math.exp(d), "hidden/norm_mean": 8.0 + step}
            for step, (p, d) in enumerate(zip(preferred, dispreferred))]


def test_curve_helpers():
    curves = load_curves_from([{"step": 0, "loss": 1.0, "flag": True, "displacement/train/preferred_prob_mean": 0.2},
                               {"step": 2, "loss": 0.5, "displacement/train/preferred_prob_mean": 0.1}])
    assert curves["loss"] == ([0, 2], [1.0, 0.5]) and "flag" not in curves  # booleans are not curves
    assert matching_keys(curves, "preferred_prob_mean") == [("displacement/train/preferred_prob_mean", "train")]
    probe = {"probe/displacement/preferred_prob_mean": ([0], [0.1]), "eval_metrics/train/loss": ([0], [0.7]),
             "loss": ([0], [0.6])}
    assert matching_keys(probe, "preferred_prob_mean") == [("probe/displacement/preferred_prob_mean", "probe")]
    assert matching_keys(probe, "loss") == [("loss", "")]  # eval_metrics/ belongs to the distribution panel
    assert is_constant([1e-3, 1e-3]) and not is_constant([1.0, 0.5])
    assert uses_probabilities(curves)  # 0.1 >= 1e-12
    assert not uses_probabilities({"displacement/preferred_prob_mean": ([0], [1e-76])})  # a sequence probability


def load_curves_from(records: list[dict]) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "metrics.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return load_curves(path)


def test_overview_layout_single_tokens_and_sequences():
    persona = load_curves_from(persona_metrics([-3.0, -2.5, -2.0], [-3.0, -3.5, -4.0]))
    layout = overview_layout(persona)
    assert layout.panels[0] is PROBABILITY_PANEL and layout.constant == {"lr": 1e-3}
    assert layout.others == ["hidden/norm_mean"]  # log-probs are in the probability panel, lr is constant
    stats = {f"eval_metrics/train/{side}_logprobs_change_{stat}": value for side in ("preferred", "dispreferred")
             for stat, value in (("median", 1.0), ("q10", 0.0), ("q25", 0.5), ("q75", 1.5), ("q90", 2.0),
                                 ("mean", 1.0), ("max", 3.0))}
    tracked = "displacement/train/"
    sequences = load_curves_from([
        {"step": 0, "loss": 0.69, f"{tracked}preferred_logprob_mean": -170.0, f"{tracked}preferred_prob_mean": 1e-74,
         f"{tracked}largest_preferred_prob_decrease_mean": 0.0, **{key: 0.0 for key in stats}},
        {"step": 2, "loss": 0.4, f"{tracked}preferred_logprob_mean": -160.0, f"{tracked}preferred_prob_mean": 3e-70,
         f"{tracked}largest_preferred_prob_decrease_mean": 1e-74, **stats}])
    layout = overview_layout(sequences)
    assert layout.panels[0] is LOGPROB_PANEL and layout.distribution_splits == ["train"]
    assert layout.others == ["eval_metrics/train/dispreferred_logprobs_change_max",
                             "eval_metrics/train/preferred_logprobs_change_max"]  # in neither panel


def test_metrics_logger_close_writes_the_overview(tmp_path):
    logger = MetricsLogger(tmp_path)
    for record in persona_metrics([-3.0, -2.5, -2.0], [-3.0, -3.5, -4.0]):
        logger.log(**record)
    written = logger.close(save_plots=True)
    assert written == [tmp_path / "plots" / OVERVIEW_FILE, tmp_path / "plots" / OTHER_FILE]
    assert written[0].stat().st_size > 10_000 and written[1].stat().st_size > 2_000  # other: hidden/norm_mean only
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [OTHER_FILE, OVERVIEW_FILE]  # 2, not 1/metric


def test_overview_without_other_metrics(tmp_path):
    records = [{"step": step, "loss": 1.0 / (step + 1), "lr": 0.1} for step in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_run_overview(tmp_path / "metrics.jsonl", tmp_path / "plots") == [tmp_path / "plots" / OVERVIEW_FILE]


def test_mean_band_is_geometric_mean_with_log_std():
    figure, (axis,) = new_figure()
    shared = plot_mean_band(axis, [([0, 1], [-1.0, -2.0]), ([0, 1, 2], [-3.0, -2.0, -5.0])], color="C0", label="y+",
                            exponentiate=True)
    assert shared == 2  # step 2 is in one run only
    line = axis.lines[0]
    assert list(line.get_ydata()) == pytest.approx([math.exp(-2.0), math.exp(-2.0)])
    band = axis.collections[0].get_paths()[0].vertices[:, 1]  # mean ± std: exp(-3)..exp(-1) at step 0, 0 at 1
    assert min(band) == pytest.approx(math.exp(-3.0)) and max(band) == pytest.approx(math.exp(-1.0))


def test_family_of_config():
    assert family_of_config({"refusal_judge": "keyword", "pref_similarity_measure": "ches_scores"}) == "sorrybench"
    assert family_of_config({"output_tokens_matching_yes": ["Yes"]}) == "persona"
    assert family_of_config({"pref_similarity_measure": "ches_scores"}) == "preference_similarity"
    assert family_of_config({"target": 1.0}) is None


def test_printers_refuse_another_family(tmp_path, capsys):
    write_run(tmp_path / "sorry" / "dpo", {"refusal_judge": "keyword", "model": "m"}, {})
    write_run(tmp_path / "persona" / "dpo", {"output_tokens_matching_yes": ["Yes"], "model": "m"}, {})
    assert other_family_error(tmp_path / "sorry", ("sorrybench",), "--experiments_dir") is None
    assert persona_printer.main(["--experiments_dir", str(tmp_path / "sorry")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --experiments_dir")
    assert "1 sorrybench run(s)" in error and "use sorrybench_results_printer.py" in error
    with pytest.raises(SystemExit) as stopped:
        similarity_printer.main(["--outputs_dir", str(tmp_path / "persona")])
    assert stopped.value.code == 2 and "use persona_single_example_results_printer.py" in capsys.readouterr().err
    assert sorrybench_printer.main(["--experiments_dir", str(tmp_path / "persona")]) == 2
    assert "this printer reads sorrybench runs" in capsys.readouterr().err


def test_persona_printer_band_plot(tmp_path):
    config = {"output_tokens_matching_yes": ["Yes"], "model": "m", "objective": "dpo", "kl_coeff": 0.1, "lr": 1e-3}
    summary = {"preferred_token_texts": ["Yes"], "dispreferred_token_texts": ["No"], "num_steps": 2}
    for seed, shift in ((0, 0.0), (1, 0.5)):
        write_run(tmp_path / "out" / f"dpo_seed{seed}", config, summary,
                  persona_metrics([-3.0 + shift, -2.5, -2.0], [-3.0, -3.5, -4.0 - shift]))
    png = tmp_path / "figures" / "bands.png"
    assert persona_printer.main(["--experiments_dir", str(tmp_path / "out"), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000 and (tmp_path / "out" / "results.json").exists()


def test_spearman_against_hand_computed_values():
    rho, p_value = spearman([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho == pytest.approx(0.8)  # 1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1))
    assert p_value == pytest.approx(0.2)  # exact two-sided: t = 0.8 sqrt(2 / 0.36) = 1.8856, df 2
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx((1.0, 0.0))
    assert all(math.isnan(v) for v in spearman([1, 2], [2, 1]))


def test_dispreferred_metric():
    assert (similarity_printer.dispreferred_metric("eval_metrics/train/preferred_logprobs_change_mean")
            == "eval_metrics/train/dispreferred_logprobs_change_mean")
    assert similarity_printer.dispreferred_metric("eval_metrics/train/loss") is None


def test_similarity_figures(tmp_path):
    row = {"model": "tiny-gpt2", "objective": "dpo", "measure": "ches_scores", "std": 0.5}
    preferred = [{**row, "quantile": 0.0, "mean": 1.0, "values": [0.5, 1.5]},
                 {**row, "quantile": 1.0, "mean": -2.0, "values": [-2.5, -1.5]}]
    dispreferred = [{**row, "quantile": q, "mean": -3.0, "values": [-3.5, -2.5]} for q in (0.0, 1.0)]
    assert figure_2(preferred, dispreferred, tmp_path / "fig2.png").stat().st_size > 10_000
    group = ExampleGroup("sim.pt", "ches_scores", all_scores=[-5.0, -4.0, -1.0, 0.0, 2.0])
    group.points = [{"run": "r", "quantile": q, "seed": 0, "example": i, "score": s, "change": c}
                    for i, (q, s, c) in enumerate([(0.0, -5.0, 1.0), (0.0, -4.0, 0.5), (1.0, 0.0, -1.0),
                                                   (1.0, 2.0, -0.5)])]
    (stats,) = similarity_examples([group], tmp_path / "examples.png")
    assert stats["num_points"] == 4
    assert stats["spearman_rho"] == pytest.approx(-0.8)  # ranks of change: 4, 3, 1, 2 -> sum d^2 = 9 + 1 + 4 + 4
    assert (tmp_path / "examples.png").stat().st_size > 10_000


def test_wilson_interval_against_hand_computed_values():
    # 8 of 10, z = 1.95996: centre (0.8 + 0.19207) / 1.38415 = 0.71674, half-width 0.31362 / 1.38415 = 0.22658
    low, high = sorrybench_printer.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    # 0 of 4: centre = half-width = (z^2 / 8) / (1 + z^2 / 4) = 0.48018 / 1.96036 = 0.24495
    assert sorrybench_printer.wilson_interval(0, 4) == pytest.approx((0.0, 0.48989), abs=1e-5)


def test_sorrybench_variants_and_pooled_counts(tmp_path, capsys):
    base = {"refusal_judge": "keyword", "model": "tiny-gpt2", "objective": "dpo", "lr": 1e-3, "sft_coeff": 0.0}
    write_run(tmp_path / "dpo_s0", {**base, "random_seed": 0},
              {"refusal_counts/train": [3, 10], "refusal_counts/test": [1, 4], "refusal_counts_initial/train": [9, 10]})
    write_run(tmp_path / "dpo_s1", {**base, "random_seed": 1},
              {"refusal_counts/train": [5, 10], "refusal_counts/test": [0, 4]})
    write_run(tmp_path / "gold", {**base, "use_gold_preferences": True, "sft_coeff": 1.0},
              {"refusal_counts/train": [10, 10], "refusal_counts/test": [4, 4]})
    write_run(tmp_path / "no_eval", {**base, "refusal_eval": False}, {"eval_metrics/train/loss": 0.6})
    assert sorrybench_printer.variant_label(
        {"objective": "ipo", "similarity_results_path": "s.pt", "pref_similarity_measure": "ln_ches_scores",
         "preference_num_samples": 2, "lr": 1e-3}) == "ipo CHES-filtered(ln_ches_scores, k=2) lr=0.001"
    assert sorrybench_printer.main(["--experiments_dir", str(tmp_path), "--output_dir", str(tmp_path / "report")]) == 0
    assert "summary.json has no refusal_counts/" in capsys.readouterr().out
    rows = {row["variant"]: row for row in json.loads((tmp_path / "report" / "sorrybench_results.json").read_text())
            ["rows"]}
    assert sorted(rows) == ["dpo +SFT(1) gold lr=0.001", "dpo lr=0.001"]
    pooled = rows["dpo lr=0.001"]["rates"]
    assert pooled["trained/train"]["refusals"] == 8 and pooled["trained/train"]["responses"] == 20
    assert pooled["trained/train"]["rate"] == 0.4
    assert pooled["initial/train"] == {**pooled["initial/train"], "refusals": 9, "responses": 10, "num_runs": 1}
    assert "initial/test" not in pooled
    table = (tmp_path / "report" / "sorrybench_refusal_rates.md").read_text()
    assert "| tiny-gpt2 | dpo lr=0.001 | 2 | 90.0% [59.6%, 98.2%] (9/10) | — |" in table
    assert (tmp_path / "report" / "sorrybench_refusal_rates.png").stat().st_size > 10_000


def test_loss_comparison_bars(tmp_path):
    def row(objective, change, cosine):
        return {"objective": objective, "setting": "β=0.1, lr=1e-06", "num_runs": 2, "num_displaced": int(change < 0),
                "preferred_logprob_change_mean": change, "preferred_logprob_change_std": 0.2,
                "dispreferred_logprob_change_mean": -1.0, "grad_cosine_mean": cosine}
    sections = [{"kind": "persona single-token", "model": "m", "rows": [row("dpo", -0.5, 0.6), row("ipo", 0.3, None)]},
                {"kind": "dataset-level, training pairs", "model": "m", "rows": [row("dpo", 1.0, None)]}]
    assert plot_sections(sections, tmp_path / "loss.png").stat().st_size > 10_000
