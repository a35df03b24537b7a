"""The reference implementation's data rules: paper truncation, paper prompt format, the torch.randperm draw,
AlpacaFarm rows, format inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.preference_data import (
    PreferenceExample, infer_dataset_format, load_preference_examples, sample_row_indices,
)
from common.preference_tokenization import (
    PAPER_ASSISTANT_TOKEN, PAPER_PROMPTER_TOKEN, SIMILARITY_SCRIPT_OPTIONS, TokenizationOptions, format_prompt,
    prepare_tokenizer_for_prompt_format, tokenize_pair,
)

CHES_OPTIONS = TokenizationOptions(eos_after_truncation=True)  # the script's rules, plain format (CharTokenizer)


class CharTokenizer:
    """One token per character (id = ord), EOS id 0: token counts can be read off the text."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) for c in text]}


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_paper_truncation_cuts_on_the_right_and_drops_emptied_pairs():
    """Prompt "abcdefghi" + "\\n" = 10 tokens, chosen "uvwxy", rejected "xyz".
    L = 12, training (EOS counted in L): responses keep 12 - 10 = 2 tokens: "uv", "xy" (EOS cut).
    L = 12, CHES (EOS after truncation): "uv" + EOS, "xy" + EOS. The prompt is never cut.
    L = 10: no room for a response -> dropped. L = 9: the prompt alone is longer -> dropped."""
    tokenizer, example = CharTokenizer(), PreferenceExample("abcdefghi", "uvwxy", "xyz", 3, {})
    pair = tokenize_pair(tokenizer, example, 12)
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == (ids("abcdefghi\n"), ids("uv"), ids("xy"))
    pair = tokenize_pair(tokenizer, example, 12, CHES_OPTIONS)
    assert (pair.chosen_ids, pair.rejected_ids, pair.source_index) == (ids("uv") + [0], ids("xy") + [0], 3)
    assert tokenize_pair(tokenizer, example, 10, CHES_OPTIONS) == "empty chosen response after truncation to 10 tokens"
    assert tokenize_pair(tokenizer, example, 9) == "prompt longer than max_input_length 9"
    untruncated = tokenize_pair(tokenizer, example, None, CHES_OPTIONS)
    assert untruncated.chosen_ids == ids("uvwxy") + [0] and untruncated.rejected_ids == ids("xyz") + [0]


def test_paper_keeps_identical_pairs_and_empty_text_only_for_training():
    """Identical responses are kept (the reference scores them) unless skip_identical. An empty response is
    [EOS] for training (the reference trainer keeps it) and no token at all for CHES (the reference drops it)."""
    tokenizer = CharTokenizer()
    same = tokenize_pair(tokenizer, PreferenceExample("p", "same", "same", 0, {}), None)
    assert same.chosen_ids == same.rejected_ids == ids("same") + [0]
    skip = TokenizationOptions(skip_identical=True)
    assert tokenize_pair(tokenizer, PreferenceExample("p", "same", "same", 0, {}), None, skip) == \
        "chosen and rejected responses are identical"
    empty = PreferenceExample("p", "", "b", 0, {})
    assert tokenize_pair(tokenizer, empty, None).chosen_ids == [0]
    assert tokenize_pair(tokenizer, empty, None, CHES_OPTIONS) == "empty chosen response"


def test_options_are_checked():
    with pytest.raises(ValueError, match="truncation: expected one of"):
        TokenizationOptions(truncation="left")
    with pytest.raises(ValueError, match="prompt_format: expected one of"):
        TokenizationOptions(prompt_format="chat")


def test_paper_prompt_format_on_tiny_gpt2():
    """tiny-gpt2 has no chat template: the paper format adds <|prompter|> = 50257 and <|assistant|> = 50258
    (vocabulary 50257 -> 50259, embeddings resized) and wraps the prompt in them; "Hi" is GPT-2 token 17250."""
    from common.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    example = PreferenceExample("Hi", " there", " go", 0, {})
    options = SIMILARITY_SCRIPT_OPTIONS
    with pytest.raises(ValueError, match="prepare_tokenizer_for_prompt_format"):
        tokenize_pair(tokenizer, example, None, options)
    assert prepare_tokenizer_for_prompt_format(tokenizer, model, "paper") is True
    assert len(tokenizer) == 50259 and model.get_input_embeddings().weight.shape[0] == 50259
    assert format_prompt(tokenizer, "Hi", prompt_format="paper") == f"{PAPER_PROMPTER_TOKEN}Hi{PAPER_ASSISTANT_TOKEN}"
    pair = tokenize_pair(tokenizer, example, None, options)
    assert pair.prompt_ids == [50257, 17250, 50258]
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id == 50256
    plain = tokenize_pair(tokenizer, example, None, TokenizationOptions(prompt_format="plain"))
    assert plain.prompt_ids == [17250, 198]  # "Hi" + "\n"
    llama_model, llama_tokenizer = load_model_and_tokenizer("tiny-llama")  # has a chat template: nothing added
    assert prepare_tokenizer_for_prompt_format(llama_tokenizer, llama_model, "paper") is False


def test_torch_randperm_draw_is_the_references():
    """torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k], in that order (values computed
    once with torch; the UltraFeedback line is what the reference's 5000-pair draw starts with)."""
    assert sample_row_indices(10, 4, 548, "torch_randperm") == [7, 2, 8, 1]
    assert sample_row_indices(61135, 5000, 548, "torch_randperm")[:5] == [22202, 31451, 15848, 45903, 14063]
    assert sorted(sample_row_indices(10, 50, 548, "torch_randperm")) == list(range(10))  # min(k, n), as the reference
    assert len(set(sample_row_indices(10, 4, -1, "torch_randperm"))) == 4  # unseeded for seed <= 0
    assert sample_row_indices(10, None, 548, "torch_randperm") == list(range(10))
    assert sample_row_indices(10, 3, 0, "python_random") == sorted(sample_row_indices(10, 3, 0, "python_random"))


ALPACA_ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output_1": "5", "output_2": "6", "preference": 1},
    {"instruction": "Name a colour.", "input": "", "output_1": "Loud", "output_2": "Blue", "preference": 2},
]


def test_alpaca_farm_rows_local_file(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    first, second = load_preference_examples(str(path), "alpaca_farm")
    assert (first.prompt, first.chosen, first.rejected) == ("Add the numbers.\n2 and 3", "5", "6")
    assert (second.prompt, second.chosen, second.rejected) == ("Name a colour.", "Blue", "Loud")
    assert first.metadata == {"preference": 1}
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(ALPACA_ROWS[0], preference=3)])
    with pytest.raises(ValueError, match=r"bad.jsonl, row 0: column `preference` must be 1 or 2, got 3"):
        load_preference_examples(str(bad), "alpaca_farm")


def test_alpaca_farm_hub_id_loads_the_human_preference_config(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config_name=None, data_dir=None, split=None):
        calls.append((name, config_name, data_dir, split))
        return ALPACA_ROWS

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_preference_examples("tatsu-lab/alpaca_farm", "alpaca_farm", split="preference")
    assert calls == [("tatsu-lab/alpaca_farm", "alpaca_human_preference", None, "preference")]
    assert [e.chosen for e in examples] == ["5", "Blue"]
    assert infer_dataset_format("tatsu-lab/alpaca_farm") == "alpaca_farm"


@pytest.mark.parametrize("row, expected", [
    (ALPACA_ROWS[0], "alpaca_farm"),
    ({"query": "q", "chosen": "a", "rejected": "b", "category": "1"}, "sorrybench_prefs"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "metadata": {"score_chosen": 9.0}}, "ultrafeedback"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": []}, "ultrafeedback"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "prompt_chosen_rejected"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh_rlhf"),
])
def test_infer_dataset_format_from_the_first_row(tmp_path, row, expected):
    assert infer_dataset_format(str(write_jsonl(tmp_path / "data.jsonl", [row]))) == expected


def test_infer_dataset_format_names_the_columns_when_it_cannot_tell(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the data set format from the columns \['a', 'b'\]"):
        infer_dataset_format(str(write_jsonl(tmp_path / "data.jsonl", [{"a": 1, "b": 2}])))
