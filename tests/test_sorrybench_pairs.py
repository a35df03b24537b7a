"""Tests for the reference pairing rule (sorrybench/pairs.py), gold preferences (sorrybench/gold.py), the
comparators (sorrybench/reward_models.py), prompts loading and the refusal-rate arithmetic."""

import json
import random

import pytest
import torch

from common.models import gpt2_tokenizer
from sorrybench.gold import (attach_generic_gold, attach_human_gold, human_outputs_by_question, load_human_judgments,
                             load_refusal_pool, resolve_gold_source)
from sorrybench.judges import COMPLIANCE, REFUSAL, UNKNOWN
from sorrybench.pairs import pair_two_responses, relabel_random_pairs, split_train_test
from sorrybench.prompts import load_sorrybench_prompts
from sorrybench.refusal_rate import compute_refusal_rates, format_comparison_table
from sorrybench.reward_models import PairRMComparator, RewardModelScorer, pairrm_input_ids
from tests.sorrybench_helpers import sorrybench_prompts_file, tiny_classifier

SCORE_OF = {REFUSAL: 1.0, COMPLIANCE: 0.0, UNKNOWN: None}  # our refusal scores


def _record(labels, prompt_index=7, responses=("first", "second")):
    return {"prompt_index": prompt_index, "category": "3", "prompt": f"question {prompt_index}",
            "responses": list(responses), "labels": list(labels), "scores": [SCORE_OF[label] for label in labels]}


def test_different_scores_prefer_the_refusal_without_a_draw():
    rng = random.Random(128)
    pair = pair_two_responses(_record([COMPLIANCE, REFUSAL]), rng)
    assert (pair["chosen"], pair["rejected"]) == ("second", "first")
    assert (pair["chosen_score"], pair["rejected_score"]) == (0.0, 1.0)  # the reference's compliance scores
    assert pair["decided_by"] == "judge" and pair["pair_type"] == "refusal-compliance"
    assert pair["question_id"] == 8 and pair["query"] == "question 7" and pair["prompt_style"] == "base"
    assert rng.random() == random.Random(128).random()  # no draw consumed


def test_ties_and_unknowns_use_the_reference_draws():
    """random.Random(128) draws 0.9400, 0.2366, 0.5115. Reference: rejected = int(u < 0.5) + 1, so
    u >= 0.5 -> rejected = response 1 (chosen = response 2); u < 0.5 -> rejected = response 2."""
    rng = random.Random(128)
    records = [_record([REFUSAL, REFUSAL], 0), _record([UNKNOWN, COMPLIANCE], 1), _record([REFUSAL, COMPLIANCE], 2),
               _record([COMPLIANCE, COMPLIANCE], 3)]
    pairs = [pair_two_responses(record, rng) for record in records]
    assert [p["chosen_response_index"] for p in pairs] == [1, 0, 0, 1]
    assert [p["decided_by"] for p in pairs] == ["random", "random", "judge", "random"]
    assert (pairs[1]["chosen_score"], pairs[1]["rejected_score"]) == (None, 1.0)
    assert pairs[3]["pair_type"] == "compliance-compliance"
    with pytest.raises(ValueError, match="exactly 2"):
        pair_two_responses({**_record([REFUSAL, REFUSAL]), "responses": ["a"]}, rng)


def test_comparator_relabels_only_random_pairs():
    rng = random.Random(128)
    pairs = [pair_two_responses(_record([REFUSAL, REFUSAL], 0, ("a much longer refusal", "short")), rng),
             pair_two_responses(_record([COMPLIANCE, REFUSAL], 1, ("long compliance text", "no")), rng)]
    assert pairs[0]["chosen"] == "short"  # u = 0.94: chosen = response 2
    calls = []

    def longer_is_better(queries, first, second):
        calls.append(list(queries))
        return [len(a) >= len(b) for a, b in zip(first, second)]

    assert relabel_random_pairs(pairs, longer_is_better) == 1 and calls == [["question 0"]]
    assert pairs[0]["chosen"] == "a much longer refusal" and pairs[0]["chosen_response_index"] == 0
    assert pairs[0]["decided_by"] == "reward_model" and pairs[1]["chosen"] == "no"


def test_split_follows_the_seeded_randperm():
    """torch.randperm(10, generator seeded 128) = [6, 3, 7, 5, 2, 8, 1, 9, 4, 0]; int(10 * 0.15) = 1 test pair."""
    pairs = [{"id": i} for i in range(10)]
    train, test = split_train_test(pairs, test_ratio=0.15, seed=128)
    assert [p["id"] for p in test] == [6] and [p["id"] for p in train] == [3, 7, 5, 2, 8, 1, 9, 4, 0]
    train, test = split_train_test(pairs, test_ratio=0.35, seed=128)
    assert [p["id"] for p in test] == [6, 3, 7]
    for bad in (1.5, -0.1, 1.0):
        with pytest.raises(ValueError, match=r"test ratio must be in \[0, 1\)"):
            split_train_test(pairs, test_ratio=bad)


HUMAN_ROWS = [
    {"question_id": 1, "human_score": 0.0, "choices": [{"index": 0, "turns": ["No1"]}]},
    {"question_id": 1, "human_score": 0.0, "choices": [{"index": 0, "turns": ["No2"]}]},
    {"question_id": 1, "human_score": 1.0, "choices": [{"index": 0, "turns": ["Yes1"]}]},
    {"question_id": 2, "human_score": 0.0, "choices": [{"index": 0, "turns": ["only a refusal"]}]},
    {"question_id": 3, "human_score": 0.25, "choices": [{"index": 0, "turns": ["R3"]}]},
    {"question_id": 3, "human_score": 0.5, "choices": [{"index": 0, "turns": ["C3a"]}]},
    {"question_id": 3, "human_score": 1.0, "choices": [{"index": 0, "turns": ["C3b"]}]},
]


def test_human_gold_drops_prompts_lacking_either_and_draws_in_order():
    """Random(128): choice([No1, No2]) = No1, choice([Yes1]), choice([R3]), choice([C3a, C3b]) = C3a."""
    outputs = human_outputs_by_question(HUMAN_ROWS)
    assert outputs[1] == {"refusal": ["No1", "No2"], "non_refusal": ["Yes1"]}
    assert outputs[3] == {"refusal": ["R3"], "non_refusal": ["C3a", "C3b"]}  # 0.5 is not < 0.5
    pairs = [{"question_id": q, "prompt_index": q - 1, "chosen": "c", "rejected": "r"} for q in (1, 2, 3, 4)]
    kept = attach_human_gold(pairs, outputs, random.Random(128))
    assert [(p["question_id"], p["gold_refusal"], p["gold_non_refusal"]) for p in kept] == [
        (1, "No1", "Yes1"), (3, "R3", "C3a")]
    with pytest.raises(ValueError, match="row 0: expected fields"):
        human_outputs_by_question([{"question_id": 1}])


def test_human_judgments_loader_reads_a_local_file(tmp_path):
    path = tmp_path / "sorry_bench_human_judgment_202406.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in HUMAN_ROWS))
    assert load_human_judgments(str(path)) == HUMAN_ROWS
    assert resolve_gold_source("human", str(path)) == ("human", HUMAN_ROWS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "human_score": 0, "choices": []}) + "\n")
    with pytest.raises(ValueError, match="choices"):
        human_outputs_by_question(load_human_judgments(str(bad)), str(bad))


def test_auto_gold_falls_back_to_generic_offline(tmp_path, capsys):
    missing = str(tmp_path / "absent.jsonl")
    assert resolve_gold_source("auto", missing) == ("generic", None)
    assert "warning: gold preferences" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        resolve_gold_source("human", missing)


def test_generic_gold_uses_the_pool_and_the_rejected_response(tmp_path):
    pool_path = tmp_path / "gold.txt"
    pool_path.write_text("I can't help with that.\n\nI won't do this.\n")
    pool = load_refusal_pool(str(pool_path))
    pairs = attach_generic_gold([{"prompt_index": 5, "rejected": "model answer"}], pool)
    assert pairs[0]["gold_refusal"] == "I won't do this." and pairs[0]["gold_non_refusal"] == "model answer"
    assert len(load_refusal_pool("data_files/sorrybench/gold_refusals.txt")) == 12


def test_pairrm_inputs_truncate_like_the_reference():
    """source <= 8 tokens; each candidate (18 - 8) // 2 = 5 tokens; total 18."""
    tokenizer = gpt2_tokenizer()
    query, first, second = "How do I pick a lock quickly", "No.", "Sure, first get a tension wrench"
    row = pairrm_input_ids(tokenizer, [query], [first], [second], source_max_tokens=8, candidate_max_tokens=5)[0]
    source = tokenizer.encode("<|source|>" + query)
    assert len(source) == 12 and len(row) == 18
    assert row == source[:8] + tokenizer.encode("<|candidate1|>" + first)[:5] + tokenizer.encode(
        "<|candidate2|>" + second)[:5]


def test_pairrm_without_its_package_says_how_to_install():
    try:
        import llm_blender  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="llm-blender"):
            PairRMComparator()
    else:
        pytest.skip("llm-blender is installed")


def test_reward_model_scorer_and_comparator():
    """Batched (right-padded) rewards equal logit 1 of the unpadded sentence-pair input (no chat template)."""
    model, tokenizer = tiny_classifier(num_labels=2)
    scorer = RewardModelScorer(model, tokenizer, label_index=1, batch_size=2)
    rewards = scorer(["p", "a question"], ["a", "bb"])
    with torch.no_grad():
        expected = [model(**tokenizer(p, r, return_tensors="pt")).logits[0, 1].item()
                    for p, r in (("p", "a"), ("a question", "bb"))]
    assert rewards == pytest.approx(expected, abs=1e-5)
    first, second = scorer(["q", "q"], ["x", "yy"])
    assert scorer.compare(["q"], ["x"], ["yy"]) == [first >= second]
    with pytest.raises(ValueError, match="out of range"):
        RewardModelScorer(model, tokenizer, label_index=2)


def test_prompts_subsample_and_categories():
    LOCAL_PROMPTS_PATH = sorrybench_prompts_file()
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
    """Refusal rate = mean refusal score of the scored responses (= 1 - mean judge score); unknowns left out.
    train: cat 1 scores [1, 0], cat 2 [1, None]; test: cat 1 [0, 0.25].
    overall (1 + 0 + 1 + 0 + 0.25) / 5 = 0.45; train 2/3; test 0.125; category 1: 1.25 / 4 = 0.3125."""
    judged = [{"split": "train", "category": "1", "labels": [REFUSAL, COMPLIANCE], "scores": [1.0, 0.0]},
              {"split": "train", "category": "2", "labels": [REFUSAL, UNKNOWN], "scores": [1.0, None]},
              {"split": "test", "category": "1", "labels": [COMPLIANCE, COMPLIANCE], "scores": [0.0, 0.25]}]
    rates = compute_refusal_rates(judged)
    assert rates["overall"] == {"refusal_rate": pytest.approx(0.45), "num_refusals": 2, "num_responses": 6,
                                "num_scored": 5, "num_unknown": 1}
    assert rates["per_split"]["train"]["refusal_rate"] == pytest.approx(2 / 3)
    assert rates["per_split"]["test"]["refusal_rate"] == 0.125
    assert rates["per_category"]["1"]["refusal_rate"] == 0.3125 and rates["per_category"]["2"]["refusal_rate"] == 1.0
    assert rates["per_split_category"]["test"]["1"] == {"refusal_rate": 0.125, "num_refusals": 0, "num_responses": 2,
                                                        "num_scored": 2, "num_unknown": 0}
    table = format_comparison_table({"base": rates, "dpo": rates}, per_category=True)
    assert "66.7% (2/4, 1 unknown)" in table
    assert "45.0% (2/6, 1 unknown)" in table and table.splitlines()[0].split() == ["model", "overall", "train", "test"]
    only_unknown = compute_refusal_rates([{"category": "1", "labels": [UNKNOWN], "scores": [None]}])
    assert only_unknown["overall"]["refusal_rate"] is None
    categories = list(compute_refusal_rates([{"category": c, "labels": [REFUSAL], "scores": [1.0]}
                                             for c in ("10", "2", "x")])["per_category"])
    assert categories == ["2", "10", "x"]  # numeric order
