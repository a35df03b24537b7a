"""ches.score_pairs: TRL preference formats in, the similarity script's scores out; filters and TRL-ready export."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from datasets import Dataset

import ches
from ches.ches import LENGTH_NAMES, load_similarity_results
from ches.score_pairs import (SCORE_COLUMNS, load_pairs, preference_example, split_implicit_prompt)
from common.models import load_model_and_tokenizer, save_model
from compute_preference_similarity_per_example import main as similarity_script
from tests.conftest import real_data

MAX_LENGTH = 96  # the paper truncation scores rows 0, 3, 4 of five_rows() and drops 1, 2 (prompts > 96 tokens)


def five_rows() -> list[dict]:
    path = real_data("ultrafeedback/train_1000.jsonl")  # skips, with the reason, where the real data is absent
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(5)]
    return [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]


@pytest.fixture(scope="module")
def tiny_gpt2():
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    return model.eval(), tokenizer


def test_scores_equal_the_per_example_script(tmp_path, tiny_gpt2):
    """5 pairs: score_pairs on a Dataset = compute_preference_similarity_per_example.py on the same rows (default
    settings of both: paper prompt format and truncation): the scores and lengths of the rows the script scored,
    the script's skip reason for the others."""
    rows = five_rows()
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    path = similarity_script(["--model", "tiny-gpt2", "--dataset", str(data), "--dataset_format",
                              "prompt_chosen_rejected", "--max_input_length", str(MAX_LENGTH), "--batch_size", "1",
                              "--device", "cpu", "--output_dir", str(tmp_path / "out"), "--no_self_check"])
    expected = load_similarity_results(path)
    model, tokenizer = tiny_gpt2
    scored = ches.score_pairs(model, tokenizer, Dataset.from_list(rows), max_input_length=MAX_LENGTH)
    assert scored.column_names[:3] == ["prompt", "chosen", "rejected"] and len(scored) == 5
    kept = expected["sample_indices"].tolist()
    assert kept == [0, 3, 4]
    for column, measure in SCORE_COLUMNS.items():
        torch.testing.assert_close(torch.tensor(scored[column], dtype=torch.float64)[kept], expected[measure],
                                   rtol=1e-6, atol=1e-6)
    for column, name in zip(("prompt_length", "chosen_length", "rejected_length"), LENGTH_NAMES):
        assert [scored[column][i] for i in kept] == expected[name].tolist()
    skipped = expected["skipped_sample_indices"].tolist()
    assert [scored["skip_reason"][i] for i in skipped] == expected["skip_reasons"]
    assert [scored["skip_reason"][i] for i in kept] == [""] * 3
    assert all(math.isnan(scored["ches"][i]) and scored["prompt_length"][i] == -1 for i in skipped)


def test_paper_format_adds_the_markers_and_plain_leaves_the_model_alone():
    """Paper format (default), tokenizer without a chat template: <|prompter|>, <|assistant|> added, embeddings
    resized (GPT-2: 50257 + 2 rows, its EOS doubles as pad); the prompt ids are <|prompter|> Q <|assistant|>.
    Plain format: nothing added, the prompt ids are Q + "\n"."""
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    row = {"prompt": "Q", "chosen": " a", "rejected": " b"}
    plain = ches.score_pairs(model, tokenizer, [row], prompt_format="plain")
    assert len(tokenizer) == 50257 and model.get_input_embeddings().weight.shape[0] == 50257
    assert plain["prompt_length"] == [len(tokenizer("Q\n")["input_ids"])]
    paper = ches.score_pairs(model, tokenizer, [row])
    assert len(tokenizer) == 50259 and model.get_input_embeddings().weight.shape[0] == 50259
    assert paper["prompt_length"] == [3] and paper["chosen_length"] == [2]  # " a" + EOS
    assert paper["ches"] != pytest.approx(plain["ches"])


def test_split_implicit_prompt():
    assert split_implicit_prompt("Sky? It is blue", "Sky? It is green") == ("Sky? It is", " blue", " green")
    user = {"role": "user", "content": "Sky?"}
    blue, green = {"role": "assistant", "content": "Blue."}, {"role": "assistant", "content": "Green."}
    assert split_implicit_prompt([user, blue], [user, green]) == ([user], [blue], [green])


def test_trl_formats_give_the_same_scores(tiny_gpt2):
    """Standard explicit / implicit and conversational explicit / implicit rows of one pair score identically."""
    model, tokenizer = tiny_gpt2
    question = "What color is the sky? It is"  # the implicit prompt runs up to where the two texts differ
    user = {"role": "user", "content": question}
    rows = [
        {"prompt": question, "chosen": " blue.", "rejected": " green."},
        {"chosen": question + " blue.", "rejected": question + " green."},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": " blue."}],
         "rejected": [{"role": "assistant", "content": " green."}]},
        {"chosen": [user, {"role": "assistant", "content": " blue."}],
         "rejected": [user, {"role": "assistant", "content": " green."}]},
    ]
    for row in rows[1:]:
        example = preference_example(row, 0, tokenizer)
        assert (example.prompt, example.chosen, example.rejected) == (rows[0]["prompt"], rows[0]["chosen"],
                                                                     rows[0]["rejected"])
    scored = ches.score_pairs(model, tokenizer, [dict(rows[0]), dict(rows[1])], max_input_length=MAX_LENGTH)
    assert scored["ches"][0] == pytest.approx(scored["ches"][1], rel=1e-9)


def test_dialogue_prompt_is_rendered_with_the_chat_template():
    _, tokenizer = load_model_and_tokenizer("tiny-llama")
    row = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "More?"}],
           "chosen": [{"role": "assistant", "content": "Yes"}], "rejected": [{"role": "assistant", "content": "No"}]}
    example = preference_example(row, 3, tokenizer)
    assert example.prompt == ("<|user|>\nHi<|endoftext|>\n<|assistant|>\nHello<|endoftext|>\n<|user|>\nMore?"
                              "<|endoftext|>\n<|assistant|>\n")
    assert example.metadata == {"prompt_is_dialogue": True} and example.source_index == 3
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        preference_example(row, 3, load_model_and_tokenizer("tiny-gpt2")[1])


def test_skipped_rows_and_bad_rows(tiny_gpt2):
    """Identical responses are scored by default (the reference's rule: every measure exactly 0) and skipped with
    skip_identical_pairs=True (the script's --skip_identical_pairs); a row without `rejected` is an error."""
    model, tokenizer = tiny_gpt2
    rows = [{"prompt": "Q", "chosen": "same", "rejected": "same"}, {"prompt": "Q", "chosen": " a", "rejected": " b"}]
    scored = ches.score_pairs(model, tokenizer, rows)
    assert [scored[column][0] for column in SCORE_COLUMNS if column != "last_hidden_embedding_inner_prod"] == [0.0] * 3
    assert scored["skip_reason"] == ["", ""] and scored["chosen_length"] == [2, 2]  # "same" / " a" + EOS
    skipping = ches.score_pairs(model, tokenizer, rows, skip_identical_pairs=True)
    assert math.isnan(skipping["ches"][0]) and skipping["chosen_length"][0] == -1
    assert skipping["skip_reason"][0] == "chosen and rejected responses are identical"
    assert skipping["skip_reason"][1] == "" and skipping["ches"][1] == pytest.approx(scored["ches"][1], rel=1e-9)
    with pytest.raises(ValueError, match="row 0: missing column `rejected`"):
        ches.score_pairs(model, tokenizer, [{"prompt": "Q", "chosen": " a"}])


def test_filters_select_rows():
    """Scores [5, 1, 4, NaN, 3]: lowest 2 -> rows 1, 4; quantile 1 window of 2 -> rows 0, 2; <= 3 -> rows 1, 4."""
    scored = Dataset.from_dict({"prompt": list("abcde"), "ches": [5.0, 1.0, 4.0, math.nan, 3.0]})
    assert ches.lowest_k(scored, 2)["prompt"] == ["b", "e"]
    assert ches.quantile_window(scored, 2, 1.0)["prompt"] == ["a", "c"]
    assert ches.within_threshold(scored, max_value=3.0)["prompt"] == ["b", "e"]
    assert ches.within_threshold(scored, min_value=3.5, max_value=4.5)["prompt"] == ["c"]
    with pytest.raises(ValueError, match="score column 'ln_ches'"):
        ches.lowest_k(scored, 2, column="ln_ches")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_for_trl_round_trips(tmp_path, tiny_gpt2, suffix):
    model, tokenizer = tiny_gpt2
    rows = five_rows()
    scored = ches.score_pairs(model, tokenizer, rows, max_input_length=MAX_LENGTH)
    path = ches.export_for_trl(ches.lowest_k(scored, 3), tmp_path / f"subset{suffix}")
    back = load_pairs(str(path))
    assert back.column_names == ["prompt", "chosen", "rejected"] and len(back) == 3
    kept = ches.lowest_k(scored, 3)
    assert back["chosen"] == kept["chosen"]
    with_scores = load_pairs(str(ches.export_for_trl(kept, tmp_path / f"scored{suffix}", keep_scores=True)))
    assert with_scores["ches"] == pytest.approx(kept["ches"])


def test_lora_adapter_spec(tmp_path, tiny_gpt2):
    """BASE@ADAPTER loads the adapter; a fresh LoRA (B = 0) computes the base model's scores."""
    lora_model, tokenizer = load_model_and_tokenizer("tiny-gpt2", use_lora=True, lora_rank=4)
    adapter = save_model(lora_model, tokenizer, tmp_path / "adapter")
    rows = [five_rows()[i] for i in (0, 3)]  # both scored at MAX_LENGTH
    with_adapter = ches.score_pairs(f"tiny-gpt2@{adapter}", None, rows, max_input_length=MAX_LENGTH)
    base = ches.score_pairs(*tiny_gpt2, rows, max_input_length=MAX_LENGTH)
    assert with_adapter["skip_reason"] == ["", ""]
    assert with_adapter["ches"] == pytest.approx(base["ches"], rel=1e-5)


def test_hub_arguments_are_passed_through(monkeypatch):
    seen = {}

    def fake_load_dataset(path, **kwargs):
        seen.update(path=path, **kwargs)
        return Dataset.from_list([{"prompt": "Q", "chosen": " a", "rejected": " b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_pairs("org/prefs", split="test_prefs", name="default", data_dir="en")
    assert seen == {"path": "org/prefs", "name": "default", "data_dir": "en", "split": "test_prefs"}
    assert len(loaded) == 1
