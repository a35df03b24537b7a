"""End to end on tiny-gpt2 with a handful of SORRY-Bench prompts: generation, judging, pairing by the reference
rule, gold preferences, CHES filtering, training through the plan runner, refusal evaluation. A fake judge
(refusal iff the response length is even) gives both labels on the random model's gibberish."""

import importlib.util
import json
import random
from collections import Counter

import pytest

import compute_preference_similarity_per_example as ches_script
import sorrybench_create_preferences_dataset as create_script
import sorrybench_evaluate_refusal_rate as evaluate_script
import sorrybench_results_printer as sorrybench_printer
from common.io_utils import read_json, read_jsonl
from common.runner import main as run_plan_main
from sorrybench.experiment import FAMILY
from sorrybench.generation import GenerationSettings
from sorrybench.judges import REFUSAL
from sorrybench.pairs import pair_two_responses
from sorrybench.preference_dataset import DatasetOptions, create_preferences_dataset
from tests.sorrybench_helpers import EvenLengthRefusalJudge, fixture_prompts_file, tiny_classifier

GENERATION = GenerationSettings(num_responses=2, max_new_tokens=6, batch_size=4, seed=0)


def _options(output_dir, **overrides) -> DatasetOptions:
    return DatasetOptions(**{"output_dir": str(output_dir), "model": "tiny-gpt2", "num_prompts": 12,
                             "prompts_path": fixture_prompts_file(), "generation": GENERATION,
                             "gold_preferences": "generic", **overrides})


def _pairs(directory):
    return read_jsonl(directory / "train.jsonl") + read_jsonl(directory / "test.jsonl")


@pytest.fixture(scope="module")
def fake_judged_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs")
    options = _options(out)
    info = create_preferences_dataset(options, judge=EvenLengthRefusalJudge())
    return out, options, info


def test_every_prompt_gives_a_pair_by_the_reference_rule(fake_judged_dataset):
    out, options, info = fake_judged_dataset
    judged = read_jsonl(out / "judgments.jsonl")
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert len(judged) == 12 and all(len(r["responses"]) == 2 for r in judged)
    assert info["num_pairs"] == 12 and (len(train), len(test)) == (11, 1)  # int(12 * 0.15) = 1
    labels = [label for record in judged for label in record["labels"]]
    assert info["initial_refusal_rate"] == pytest.approx(labels.count(REFUSAL) / 24)
    ties = sum(record["labels"][0] == record["labels"][1] for record in judged)
    assert info["num_pairs_decided_at_random"] == ties == info["decided_by_counts"].get("random", 0)
    rng = random.Random(128)  # the same stream replays the same pairs
    expected = {pair["prompt_index"]: pair for pair in (pair_two_responses(record, rng) for record in judged)}
    for pair in train + test:
        assert {k: pair[k] for k in expected[pair["prompt_index"]]} == expected[pair["prompt_index"]]
        if pair["decided_by"] == "judge":
            assert pair["chosen_label"] == REFUSAL and pair["chosen_score"] == 0.0 and pair["rejected_score"] == 1.0
        assert pair["gold_non_refusal"] == pair["rejected"] and pair["gold_refusal"]
    assert info["gold_preferences"] == "generic"
    again = create_preferences_dataset(options, judge=EvenLengthRefusalJudge())  # resumes: nothing regenerated
    assert again == info and read_jsonl(out / "train.jsonl") == train


def test_human_gold_drops_prompts_without_both_judgments(fake_judged_dataset, tmp_path):
    out, _, _ = fake_judged_dataset
    question_ids = sorted(record["prompt_index"] + 1 for record in read_jsonl(out / "judgments.jsonl"))
    rows = []
    for q in question_ids[:3]:  # refusal + compliance for 3 prompts, a refusal only for the 4th
        rows += [{"question_id": q, "human_score": 0.0, "choices": [{"turns": [f"refuse {q}"]}]},
                 {"question_id": q, "human_score": 1.0, "choices": [{"turns": [f"comply {q}"]}]}]
    rows.append({"question_id": question_ids[3], "human_score": 0.0, "choices": [{"turns": ["refuse only"]}]})
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps(row) + "\n" for row in rows))
    info = create_preferences_dataset(_options(tmp_path / "gold", gold_preferences="human",
                                               human_judgments_path=str(human), reuse_generations_from=str(out)),
                                      judge=EvenLengthRefusalJudge())
    pairs = _pairs(tmp_path / "gold")
    assert info["gold_preferences"] == "human" and info["num_pairs"] == 3 == len(pairs)
    assert info["num_dropped_without_human_gold"] == 9
    assert {(p["gold_refusal"], p["gold_non_refusal"]) for p in pairs} == {
        (f"refuse {q}", f"comply {q}") for q in question_ids[:3]}


def test_comparator_relabels_the_random_pairs(fake_judged_dataset, tmp_path):
    out, _, info = fake_judged_dataset
    rm_info = create_preferences_dataset(
        _options(tmp_path / "rm", reuse_generations_from=str(out)), judge=EvenLengthRefusalJudge(),
        comparator=lambda queries, first, second: [len(a) >= len(b) for a, b in zip(first, second)])
    assert rm_info["reward_model"] == "injected" and set(rm_info["decided_by_counts"]) <= {"judge", "reward_model"}
    assert rm_info["decided_by_counts"].get("reward_model", 0) == info["num_pairs_decided_at_random"]
    for pair in _pairs(tmp_path / "rm"):
        if pair["decided_by"] == "reward_model":
            assert len(pair["chosen"]) >= len(pair["rejected"])


def test_script_reference_flags_with_a_hub_style_reward_model(tmp_path, capsys):
    """The reference command (--use_rm --gpu_id 0 --random_seed 128) with a local sequence classifier as the
    reward model; without CUDA --gpu_id warns and uses the CPU."""
    model, tokenizer = tiny_classifier(num_labels=1)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    out = tmp_path / "prefs"
    info = create_script.main(["--model", "tiny-gpt2", "--use_rm", "--reward_model", str(tmp_path / "rm"),
                               "--gpu_id", "0", "--random_seed", "128", "--output_dir", str(out),
                               "--prompts_path", fixture_prompts_file(), "--num_prompts", "4",
                               "--categories", "1", "2", "--max_output_length", "5", "--batch_size", "2",
                               "--test_ratio", "0.25", "--gold_preferences", "generic"])
    assert info["num_pairs"] == 4 and (info["num_train"], info["num_test"]) == (3, 1)
    assert info["judge"] == "keyword" and info["reward_model"] == str(tmp_path / "rm")
    assert info["options"]["generation"]["max_new_tokens"] == 5 and info["options"]["random_seed"] == 128
    assert {p["category"] for p in _pairs(out)} <= {"1", "2"}
    assert str(create_script.default_output_dir("meta-llama/Meta-Llama-3-8B-Instruct")).endswith(
        "data_files/sorrybench/Meta-Llama-3-8B-Instruct")
    assert create_script.default_output_dir("smollm2-135m-instruct").name == "smollm2-135m-instruct"


@pytest.mark.parametrize("flags, message", [
    (["--test_fraction", "1.5"], "test ratio must be in [0, 1)"),
    (["--test_ratio", "-0.2"], "test ratio must be in [0, 1)"),
    (["--num_responses", "3"], "num_responses must be 2"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--prompt_styles", "slang"], "only the 'base' prompts"),
    (["--use_rm"], "needs the llm-blender package"),
])
def test_script_rejects_bad_values_before_generation(tmp_path, capsys, flags, message):
    if flags == ["--use_rm"] and importlib.util.find_spec("llm_blender") is not None:
        pytest.skip("llm-blender is installed")
    out = tmp_path / "never_created"
    with pytest.raises(SystemExit) as stopped:
        create_script.main(["--model", "tiny-gpt2", "--output_dir", str(out), *flags])
    assert stopped.value.code == 2 and not out.exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


def test_script_fails_when_the_model_never_refused(tmp_path, capsys):
    """Gibberish never matches a refusal pattern: without gold preferences the data set is useless -> exit 1."""
    out = tmp_path / "prefs"
    with pytest.raises(SystemExit) as stopped:
        create_script.main(["--model", "tiny-gpt2", "--output_dir", str(out), "--prompts_path",
                            fixture_prompts_file(), "--num_prompts", "3", "--max_new_tokens", "3",
                            "--gold_preferences", "none", "--device", "cpu"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 1 and "the model never refused" in error and "--gold_preferences" in error
    assert (out / "dataset_info.json").is_file() and not (out / "train.jsonl").exists()


def test_evaluate_script_two_models(fake_judged_dataset, tmp_path):
    dataset_dir = fake_judged_dataset[0]
    rates = evaluate_script.main(["--models", "tiny-gpt2", "tiny-llama", "--dataset_path", str(dataset_dir),
                                  "--output_dir", str(tmp_path), "--max_new_tokens", "4", "--gpu_id", "0",
                                  "--per_category"])
    num_prompts = read_json(dataset_dir / "dataset_info.json")["num_pairs"]
    for model in ("tiny-gpt2", "tiny-llama"):
        assert rates[model]["overall"]["num_responses"] == num_prompts
        assert rates[model]["generation"]["temperature"] == 0.7  # the reference's sampling
        saved = read_json(tmp_path / model / "refusal_rates.json")
        assert saved["overall"] == rates[model]["overall"] and saved["judge"] == "keyword"
        assert read_json(tmp_path / f"{model}_refusal_eval.json") == {
            "test_refusal_rate": rates[model]["per_split"]["test"]["refusal_rate"],
            "train_refusal_rate": rates[model]["per_split"]["train"]["refusal_rate"]}
    assert set(read_json(tmp_path / "comparison.json")) == {"tiny-gpt2", "tiny-llama"}


def test_evaluate_script_with_no_prompts_exits_2(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(SystemExit) as stopped:
        evaluate_script.main(["--models", "tiny-gpt2", "--dataset_path", str(tmp_path)])
    assert stopped.value.code == 2 and "0 prompts to evaluate" in capsys.readouterr().err


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
    gold = {**base, "experiment_name": "gold", "sft_coeff": 0.0, "use_gold_preferences": True}
    filtered = {**base, "experiment_name": "filtered_{objective}", "objective": "ipo", "sft_coeff": 0.0,
                "similarity_results_path": str(similarity_file), "pref_similarity_measure": "ln_ches_scores",
                "preference_num_samples": 2, "save_model": True, "refusal_eval_before_training": True}
    plan = {"name": "sorrybench_test", "configurations": [{"base_config": c, "options": {}}
                                                          for c in (base, gold, filtered)]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    assert run_plan_main(FAMILY, ["--plan_config_path", str(plan_path)]) == 0
    num_train = len(read_jsonl(train_path))
    for name in ("dpo_sft1-0", "gold", "filtered_ipo"):
        summary = read_json(tmp_path / "runs" / name / "summary.json")
        for split in ("train", "test"):
            # 4 sampled tokens of a randomly initialised tiny-gpt2 never open with a keyword judge's refusal phrase
            assert summary[f"refusal_rate/{split}"] == 0.0
            assert summary[f"refusal_counts/{split}"] == [0, {"train": num_train, "test": 1}[split]]
            assert f"eval_metrics/{split}/preferred_logprobs_change_mean" in summary
        assert summary["refusal_counts/train"][1] == num_train  # every train prompt, one response each
        rates = read_json(tmp_path / "runs" / name / "refusal_eval" / "refusal_rates.json")
        assert rates["per_split"]["train"]["num_responses"] == num_train
        assert rates["generation"]["temperature"] == 0.7
    plain, gold_summary = (read_json(tmp_path / "runs" / n / "summary.json") for n in ("dpo_sft1-0", "gold"))
    key = "eval_metrics/train/preferred_logprobs_mean"
    assert gold_summary[key] != plain[key]  # trained and evaluated on the gold responses
    filtered_summary = read_json(tmp_path / "runs" / "filtered_ipo" / "summary.json")
    assert filtered_summary["selection/num_selected"] == 2 and filtered_summary["refusal_counts/train_subset"][1] == 2
    assert "refusal_rate_initial/test" in filtered_summary
    assert sorrybench_printer.main(["--experiments_dir", str(tmp_path / "runs")]) == 0  # tables and bars of these runs
    assert (tmp_path / "runs" / sorrybench_printer.PLOT_FILE).stat().st_size > 0
    model_dir = str(tmp_path / "runs" / "filtered_ipo" / "model")  # the saved model feeds the evaluation script
    rates = evaluate_script.main(["--models", model_dir, "--dataset_path", str(dataset_dir), "--output_dir",
                                  str(tmp_path / "eval"), "--max_new_tokens", "4", "--device", "cpu",
                                  "--splits", "test"])
    assert rates[model_dir]["overall"]["num_responses"] == len(read_jsonl(dataset_dir / "test.jsonl"))


def test_train_pair_types_keeps_only_those_pairs(fake_judged_dataset, tmp_path):
    dataset_dir = fake_judged_dataset[0]
    train = read_jsonl(dataset_dir / "train.jsonl")
    kept_type, count = Counter(pair["pair_type"] for pair in train).most_common(1)[0]
    base = {"outputs_dir": str(tmp_path / "runs"), "model": "tiny-gpt2", "dataset": str(dataset_dir / "train.jsonl"),
            "eval_dataset": str(dataset_dir / "test.jsonl"), "batch_size": 4, "epochs": 1, "refusal_eval": False,
            "save_metric_plots": False, "reference_cache_dir": ""}
    configs = [{**base, "experiment_name": "kept", "train_pair_types": [kept_type]},
               {**base, "experiment_name": "none_left", "train_pair_types": ["unknown-unknown"]}]
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"name": "pair_types", "configurations": [{"base_config": c} for c in configs]}))
    assert run_plan_main(FAMILY, ["--plan_config_path", str(plan_path)]) == 1  # the second run fails, the first lands
    assert read_json(tmp_path / "runs" / "kept" / "summary.json")["num_train_pairs"] == count < len(train)
    status = read_json(tmp_path / "runs" / "none_left" / "status.json")
    assert status["status"] == "failed" and "no pair is of a pair_type in train_pair_types ['unknown-unknown']" in json.dumps(status)
