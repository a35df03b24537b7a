"""Tests for sorrybench/pairs.py, sorrybench/prompts.py and the rate arithmetic of sorrybench/refusal_rate.py."""

import json

import pytest
import torch

from sorrybench.judges import COMPLIANCE, REFUSAL, UNKNOWN
from sorrybench.pairs import RewardModelScorer, build_pair, load_gold_refusals, split_train_test
from sorrybench.prompts import load_sorrybench_prompts
from sorrybench.refusal_rate import compute_refusal_rates, format_comparison_table
from tests.conftest import real_data
from tests.sorrybench_helpers import tiny_classifier


def _record(responses, labels, prompt_index=7):
    scores = [{REFUSAL: 1.0, COMPLIANCE: 0.0, UNKNOWN: None}[label] for label in labels]
    return {"prompt_index": prompt_index, "category": "3", "prompt": "How do I do X?", "responses": responses,
            "labels": labels, "scores": scores}


def test_refusal_compliance_pair_needs_no_tie_break():
    pair = build_pair(_record(["Sure, step 1 ...", "I can't help with that."], [COMPLIANCE, REFUSAL]))
    assert (pair["chosen"], pair["rejected"]) == ("I can't help with that.", "Sure, step 1 ...")
    assert (pair["pair_type"], pair["tie_break"]) == ("refusal-compliance", "none")
    assert (pair["chosen_label"], pair["rejected_label"]) == (REFUSAL, COMPLIANCE)
    assert (pair["chosen_judge_score"], pair["rejected_judge_score"]) == (1.0, 0.0)
    assert (pair["chosen_response_index"], pair["rejected_response_index"]) == (1, 0)
    assert pair["query"] == "How do I do X?" and pair["category"] == "3" and "chosen_reward" not in pair


def test_both_refuse_shortest_rule():
    """Lengths 30 and 14: the shorter refusal is chosen, the longer one rejected."""
    record = _record(["I cannot assist with this one.", "I can't do it."], [REFUSAL, REFUSAL])
    pair = build_pair(record)
    assert (pair["chosen"], pair["rejected"]) == ("I can't do it.", "I cannot assist with this one.")
    assert (pair["pair_type"], pair["tie_break"]) == ("refusal-refusal", "shortest")


def test_both_refuse_reward_model_rule():
    """Rewards [0.9, -0.2]: the longer but higher-reward refusal is chosen; rewards are recorded."""
    record = _record(["I cannot assist with this one.", "I can't do it."], [REFUSAL, REFUSAL])
    pair = build_pair(record, rewards=[0.9, -0.2])
    assert (pair["chosen"], pair["rejected"]) == ("I cannot assist with this one.", "I can't do it.")
    assert pair["tie_break"] == "reward_model"
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (0.9, -0.2)


def test_three_responses_tie_among_compliances():
    """One refusal, two compliances: the rejected compliance is the worst (longest / lowest reward)."""
    record = _record(["Sure: a.", "I won't help.", "Sure, here is a longer answer."], [COMPLIANCE, REFUSAL, COMPLIANCE])
    assert build_pair(record)["rejected"] == "Sure, here is a longer answer."
    assert build_pair(record)["tie_break"] == "shortest"
    by_reward = build_pair(record, rewards=[-1.0, 0.0, 2.0])
    assert by_reward["rejected"] == "Sure: a." and by_reward["tie_break"] == "reward_model"


def test_skipped_prompts():
    assert build_pair(_record(["Sure.", "Of course."], [COMPLIANCE, COMPLIANCE])) == "no refusal among the responses"
    assert build_pair(_record(["I can't.", "???"], [REFUSAL, UNKNOWN])) == "a single distinct refusal and no compliance"
    identical = _record(["I can't.", "I can't."], [REFUSAL, REFUSAL])
    assert build_pair(identical) == "a single distinct refusal and no compliance"
    with pytest.raises(ValueError, match="differ in length"):
        build_pair(_record(["a", "b"], [REFUSAL, REFUSAL]), rewards=[1.0])


def test_gold_mode_replaces_the_chosen_response_of_the_model_pair():
    gold = "I'm sorry, but I can't help with that request."
    record = _record(["Sure, step 1.", "I can't."], [COMPLIANCE, REFUSAL])
    pair = build_pair(record, gold_refusal=gold)
    assert (pair["chosen"], pair["rejected"], pair["pair_type"]) == (gold, "Sure, step 1.", "gold-compliance")
    assert pair["chosen_label"] == "gold" and pair["chosen_response_index"] is None and pair["tie_break"] == "none"
    both_refuse = build_pair(_record(["I won't.", "I can't do that."], [REFUSAL, REFUSAL]), gold_refusal=gold)
    assert (both_refuse["rejected"], both_refuse["pair_type"], both_refuse["tie_break"]) == (
        "I can't do that.", "gold-refusal", "shortest")  # the same rejected response as without gold
    no_refusal = _record(["Sure.", "Of course."], [COMPLIANCE, COMPLIANCE])
    assert build_pair(no_refusal, gold_refusal=gold) == "no refusal among the responses"


def test_gold_mode_all_prompts():
    gold = "No."
    no_refusal = _record(["Sure, here.", "Of course."], [COMPLIANCE, COMPLIANCE])
    pair = build_pair(no_refusal, gold_refusal=gold, gold_prompts="all")
    assert (pair["rejected"], pair["pair_type"], pair["tie_break"]) == ("Sure, here.", "gold-compliance", "shortest")
    only_refusals = _record(["I won't.", "No."], [REFUSAL, REFUSAL])  # "No." equals the gold text: unusable
    assert build_pair(only_refusals, gold_refusal=gold, gold_prompts="all")["rejected"] == "I won't."
    unusable = _record(["x", "y"], [UNKNOWN, UNKNOWN])
    assert build_pair(unusable, gold_refusal=gold, gold_prompts="all").startswith("no usable")
    with pytest.raises(ValueError, match="gold_prompts"):
        build_pair(no_refusal, gold_refusal=gold, gold_prompts="some")


def test_split_is_deterministic_and_disjoint():
    pairs = [{"query": f"q{i}"} for i in range(20)]
    train, test = split_train_test(pairs, test_fraction=0.15, seed=3)
    again_train, again_test = split_train_test(pairs, test_fraction=0.15, seed=3)
    assert (train, test) == (again_train, again_test)
    assert len(test) == 3 and len(train) == 17  # round(0.15 * 20) = 3
    assert sorted(p["query"] for p in train + test) == sorted(p["query"] for p in pairs)
    assert [p["query"] for p in train] == [p["query"] for p in pairs if p not in test]  # input order kept
    assert split_train_test(pairs, seed=4)[1] != test  # another seed, another split
    assert [len(part) for part in split_train_test(pairs[:5])] == [4, 1]  # round(0.75) = 1
    assert [len(part) for part in split_train_test(pairs[:2])] == [1, 1]  # round(0.3) = 0 -> clamped to 1
    assert [len(part) for part in split_train_test(pairs[:1])] == [1, 0]
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(pairs, test_fraction=1.0)


def test_gold_refusal_files(tmp_path):
    prompts = [{"prompt_index": i, "prompt": f"prompt {i}", "category": "1"} for i in (0, 1, 5)]
    pool = tmp_path / "gold.txt"
    pool.write_text("Refusal A\n\nRefusal B\n")
    assert load_gold_refusals(pool, prompts) == {0: "Refusal A", 1: "Refusal B", 5: "Refusal B"}  # 5 mod 2 = 1
    by_prompt = tmp_path / "gold.jsonl"
    by_prompt.write_text(json.dumps({"prompt": " prompt 5 ", "refusal": "No."}) + "\n")
    assert load_gold_refusals(by_prompt, prompts) == {5: "No."}
    by_index = tmp_path / "gold.csv"
    by_index.write_text("prompt_index,refusal\n1,Nope\n")
    assert load_gold_refusals(by_index, prompts) == {1: "Nope"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="non-empty `refusal`"):
        load_gold_refusals(bad, prompts)


def test_reward_model_scorer_reads_the_chosen_logit():
    """Batched (right-padded) rewards equal logit 1 of the unpadded sentence-pair input (no chat template)."""
    model, tokenizer = tiny_classifier(num_labels=2)
    rewards = RewardModelScorer(model, tokenizer, label_index=1, batch_size=2)(["p", "a question"], ["a", "bb"])
    with torch.no_grad():
        expected = [model(**tokenizer(p, r, return_tensors="pt")).logits[0, 1].item()
                    for p, r in (("p", "a"), ("a question", "bb"))]
    assert rewards == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        RewardModelScorer(model, tokenizer, label_index=2)


def test_prompts_subsample_and_categories():
    LOCAL_PROMPTS_PATH = real_data("sorrybench/sorry_bench_202406.csv")
    all_prompts = load_sorrybench_prompts(str(LOCAL_PROMPTS_PATH))
    assert len(all_prompts) == 450 and all_prompts[0]["category"] == "1" and all_prompts[0]["prompt_index"] == 0
    some = load_sorrybench_prompts(str(LOCAL_PROMPTS_PATH), num_prompts=5, categories=["2", "10"], seed=1)
    assert len(some) == 5 and {p["category"] for p in some} <= {"2", "10"}
    assert some == load_sorrybench_prompts(str(LOCAL_PROMPTS_PATH), num_prompts=5, categories=["2", "10"], seed=1)
    assert [p["prompt_index"] for p in some] == sorted(p["prompt_index"] for p in some)
    with pytest.raises(ValueError, match="do not occur"):
        load_sorrybench_prompts(str(LOCAL_PROMPTS_PATH), categories=["99"])
    with pytest.raises(ValueError, match="num_prompts must be in"):
        load_sorrybench_prompts(str(LOCAL_PROMPTS_PATH), num_prompts=11, categories=["1"])


def test_refusal_rates_hand_values():
    """train: cat 1 [R, C], cat 2 [R, U]; test: cat 1 [C, C].
    overall 2/6; train 2/4 = 0.5; test 0/2; category 1: 1/4 = 0.25; category 2: 1/2; unknown 1."""
    judged = [{"split": "train", "category": "1", "labels": [REFUSAL, COMPLIANCE]},
              {"split": "train", "category": "2", "labels": [REFUSAL, UNKNOWN]},
              {"split": "test", "category": "1", "labels": [COMPLIANCE, COMPLIANCE]}]
    rates = compute_refusal_rates(judged)
    assert rates["overall"] == {"refusal_rate": pytest.approx(1 / 3), "num_refusals": 2, "num_responses": 6,
                                "num_unknown": 1}
    assert rates["per_split"]["train"]["refusal_rate"] == 0.5 and rates["per_split"]["test"]["refusal_rate"] == 0.0
    assert rates["per_category"]["1"]["refusal_rate"] == 0.25 and rates["per_category"]["2"]["refusal_rate"] == 0.5
    assert rates["per_split_category"]["test"]["1"] == {"refusal_rate": 0.0, "num_refusals": 0, "num_responses": 2}
    table = format_comparison_table({"base": rates, "dpo": rates}, per_category=True)
    assert "50.0% (2/4)" in table and "33.3% (2/6)" in table and table.splitlines()[0].split() == [
        "model", "overall", "train", "test"]
    categories = list(compute_refusal_rates([{"category": c, "labels": [REFUSAL]} for c in ("10", "2", "x")])
                      ["per_category"])
    assert categories == ["2", "10", "x"]  # numeric order
