"""End to end on tiny-gpt2 with a handful of SORRY-Bench prompts: generation, judging, pair creation, CHES
filtering, training through the plan runner, refusal evaluation. A fake judge (refusal iff the response
length is even) gives both labels on the random model's gibberish; the script run uses gold refusals."""

import json
from collections import Counter

import pytest

import compute_preference_similarity_per_example as ches_script
import sorrybench_create_preferences_dataset as create_script
import sorrybench_evaluate_refusal_rate as evaluate_script
from common.io_utils import read_json, read_jsonl
from common.runner import main as run_plan_main
from sorrybench.experiment import FAMILY, SorryBenchConfig
from sorrybench.generation import GenerationSettings
from sorrybench.judges import REFUSAL
from sorrybench.preference_dataset import DatasetOptions, create_preferences_dataset
from tests.sorrybench_helpers import EvenLengthRefusalJudge

GENERATION = GenerationSettings(num_responses=2, max_new_tokens=6, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def fake_judged_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs")
    options = DatasetOptions(output_dir=str(out), model="tiny-gpt2", num_prompts=12, generation=GENERATION)
    info = create_preferences_dataset(options, judge=EvenLengthRefusalJudge())
    return out, options, info


def test_dataset_files_and_counts(fake_judged_dataset):
    out, options, info = fake_judged_dataset
    judged = read_jsonl(out / "judgments.jsonl")
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert len(judged) == 12 and all(len(r["responses"]) == 2 for r in judged)
    labels = [label for record in judged for label in record["labels"]]
    assert info["initial_refusal_rate"] == pytest.approx(labels.count(REFUSAL) / 24)
    assert info["num_pairs"] == len(train) + len(test) == info["num_train"] + info["num_test"] > 0
    assert info["num_refusal_compliance_pairs"] + info["num_refusal_refusal_pairs"] == info["num_pairs"]
    assert info["num_pairs"] + sum(info["skipped_prompts"].values()) == 12
    assert info["judge"] == "even_length_fake" and info["tie_break_counts"].keys() <= {"none", "shortest"}
    for pair in train + test:
        assert pair["chosen_label"] == REFUSAL and len(pair["chosen"]) % 2 == 0
        assert {"query", "chosen", "rejected", "category", "rejected_label", "chosen_judge_score"} <= pair.keys()
    # a rerun resumes: nothing is regenerated (no model is even loaded) and the outputs are identical
    again = create_preferences_dataset(options, judge=EvenLengthRefusalJudge())
    assert again == info and read_jsonl(out / "train.jsonl") == train


def test_gold_mode_reusing_generations(fake_judged_dataset, tmp_path):
    """Gold mode on the same generations: the same prompts and rejected responses, chosen = gold refusal."""
    out, options, _ = fake_judged_dataset
    pool = tmp_path / "gold.txt"
    pool.write_text("I can't help with that.\n")
    gold_options = DatasetOptions(output_dir=str(tmp_path / "gold"), model="tiny-gpt2", num_prompts=12,
                                  generation=GENERATION, gold_refusals_path=str(pool), reuse_generations_from=str(out))
    info = create_preferences_dataset(gold_options, judge=EvenLengthRefusalJudge())
    model_pairs = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
    gold_pairs = read_jsonl(tmp_path / "gold" / "train.jsonl") + read_jsonl(tmp_path / "gold" / "test.jsonl")
    assert info["mode"] == "gold (with_refusal)"
    assert sorted((p["prompt_index"], p["rejected"]) for p in gold_pairs) == sorted(
        (p["prompt_index"], p["rejected"]) for p in model_pairs)
    assert {p["chosen"] for p in gold_pairs} == {"I can't help with that."}


def test_reward_model_breaks_ties(fake_judged_dataset, tmp_path):
    """Reward = response length (longer = better) reverses the default 'shortest' choice among refusals."""
    out, _, info = fake_judged_dataset
    options = DatasetOptions(output_dir=str(tmp_path / "rm"), model="tiny-gpt2", num_prompts=12, generation=GENERATION,
                             reuse_generations_from=str(out))
    rm_info = create_preferences_dataset(options, judge=EvenLengthRefusalJudge(),
                                         reward_fn=lambda prompts, responses: [float(len(r)) for r in responses])
    assert rm_info["reward_model"] == "injected" and rm_info["num_pairs"] == info["num_pairs"]
    assert set(rm_info["tie_break_counts"]) <= {"none", "reward_model"}
    assert len(read_jsonl(tmp_path / "rm" / "rewards.jsonl")) == 12
    for pair in read_jsonl(tmp_path / "rm" / "train.jsonl") + read_jsonl(tmp_path / "rm" / "test.jsonl"):
        assert pair["chosen_reward"] == len(pair["chosen"]) and pair["rejected_reward"] == len(pair["rejected"])
        if pair["pair_type"] == "refusal-refusal":
            assert len(pair["chosen"]) >= len(pair["rejected"])


def test_script_gold_mode_with_keyword_judge(tmp_path):
    gold = tmp_path / "gold.txt"
    gold.write_text("I'm sorry, but I can't help with that.\nI won't assist with this request.\n")
    out = tmp_path / "gold_prefs"
    info = create_script.main(["--output_dir", str(out), "--model", "tiny-gpt2", "--num_prompts", "6",
                               "--categories", "1", "2", "--max_new_tokens", "5", "--batch_size", "3",
                               "--gold_refusals_path", str(gold), "--gold_prompts", "all", "--device", "cpu"])
    pairs = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
    assert info["mode"] == "gold (all)" and info["judge"] == "keyword" and len(pairs) == info["num_pairs"] > 0
    assert all(p["chosen_label"] == "gold" and p["pair_type"].startswith("gold-") for p in pairs)
    assert {p["category"] for p in pairs} <= {"1", "2"}
    assert read_json(out / "dataset_info.json")["options"]["generation"]["max_new_tokens"] == 5


def test_evaluate_script_two_models(fake_judged_dataset, tmp_path):
    dataset_dir = fake_judged_dataset[0]
    rates = evaluate_script.main(["--models", "tiny-gpt2", "tiny-llama", "--dataset_path", str(dataset_dir),
                                  "--output_dir", str(tmp_path), "--max_new_tokens", "4", "--device", "cpu",
                                  "--per_category"])
    num_prompts = read_json(dataset_dir / "dataset_info.json")["num_pairs"]
    for model in ("tiny-gpt2", "tiny-llama"):
        assert rates[model]["overall"]["num_responses"] == num_prompts
        saved = read_json(tmp_path / model / "refusal_rates.json")
        assert saved["overall"] == rates[model]["overall"] and saved["judge"] == "keyword"
        assert len(read_jsonl(tmp_path / model / "generations.jsonl")) == num_prompts
    assert set(read_json(tmp_path / "comparison.json")) == {"tiny-gpt2", "tiny-llama"}


def test_plan_runner_trains_and_measures_refusal_rates(fake_judged_dataset, tmp_path):
    dataset_dir = fake_judged_dataset[0]
    train_path = str(dataset_dir / "train.jsonl")
    similarity_file = ches_script.main(["--model", "tiny-gpt2", "--dataset", train_path, "--dataset_format",
                                        "sorrybench_prefs", "--output_dir", str(tmp_path / "ches"), "--device", "cpu"])
    base = {"experiment_name": "{objective}_sft{sft_coeff}", "outputs_dir": str(tmp_path / "runs"),
            "model": "tiny-gpt2", "dataset": train_path, "eval_dataset": str(dataset_dir / "test.jsonl"),
            "objective": "dpo", "sft_coeff": 1.0, "lr": 1e-3, "batch_size": 4, "epochs": 1,
            "refusal_max_new_tokens": 4, "refusal_generation_batch_size": 4, "save_metric_plots": False,
            "random_seed": 0, "reference_cache_dir": ""}
    filtered = {**base, "experiment_name": "filtered_{objective}", "objective": "ipo", "sft_coeff": 0.0,
                "similarity_results_path": str(similarity_file), "pref_similarity_measure": "ln_ches_scores",
                "preference_num_samples": 2, "save_model": True, "refusal_eval_before_training": True}
    plan = {"name": "sorrybench_test", "configurations": [{"base_config": base, "options": {}},
                                                          {"base_config": filtered, "options": {}}]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    assert run_plan_main(FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    num_train = len(read_jsonl(train_path))
    for name in ("dpo_sft1-0", "filtered_ipo"):
        summary = read_json(tmp_path / "runs" / name / "summary.json")
        for split in ("train", "test"):
            assert 0.0 <= summary[f"refusal_rate/{split}"] <= 1.0
            assert f"eval_metrics/{split}/preferred_logprobs_change_mean" in summary
        assert summary["refusal_counts/train"][1] == num_train  # every train prompt, one response each
        rates = read_json(tmp_path / "runs" / name / "refusal_eval" / "refusal_rates.json")
        assert rates["per_split"]["train"]["num_responses"] == num_train
    filtered_summary = read_json(tmp_path / "runs" / "filtered_ipo" / "summary.json")
    assert filtered_summary["selection/num_selected"] == 2 and filtered_summary["refusal_counts/train_subset"][1] == 2
    assert filtered_summary["num_train_pairs"] == 2
    assert "refusal_rate_initial/test" in filtered_summary
    # the saved model can be evaluated by the evaluation script
    model_dir = str(tmp_path / "runs" / "filtered_ipo" / "model")
    rates = evaluate_script.main(["--models", model_dir, "--dataset_path", str(dataset_dir), "--output_dir",
                                  str(tmp_path / "eval"), "--max_new_tokens", "4", "--device", "cpu",
                                  "--splits", "test"])
    assert rates[model_dir]["overall"]["num_responses"] == len(read_jsonl(dataset_dir / "test.jsonl"))


def test_config_validation_names_the_field():
    problems = SorryBenchConfig(eval_dataset=None, refusal_judge="gpt4", refusal_num_responses=2).validate()
    text = "\n".join(problems)
    assert "eval_dataset is empty" in text
    assert "refusal_judge must be one of" in text and "identical responses" in text
    assert not SorryBenchConfig().validate()
    wrong_format = SorryBenchConfig(dataset_format="ultrafeedback").validate()
    assert Counter(p.split(" ")[0] for p in wrong_format)["dataset_format"] == 1


@pytest.mark.parametrize("plan_name", ["smollm2_cpu.json", "gemma2b_it_paper.json", "llama3_8b_instruct_paper.json"])
def test_shipped_plans_validate(plan_name):
    from pathlib import Path

    from common.plan import load_plan

    plan = load_plan(Path(__file__).resolve().parents[1] / "sorrybench" / "experiments_plans" / plan_name,
                     SorryBenchConfig, check_input_files=False)  # inputs are written by the data set script first
    assert len(plan.runs) == 8
    assert {run.config.objective for run in plan.runs} == {"dpo", "ipo"}
    filtered = [run.config for run in plan.runs if run.config.similarity_results_path]
    assert len(filtered) == 2 and all(c.pref_similarity_measure == "ln_ches_scores" for c in filtered)
