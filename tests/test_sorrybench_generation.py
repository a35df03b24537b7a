"""Tests for sorrybench/generation.py and sorrybench/resumable.py: left padding, seeded batched sampling,
resumable JSONL processing."""

import json

import pytest

from common.io_utils import read_jsonl
from sorrybench.generation import GenerationSettings, encode_prompt, generate_for_prompts, generate_responses, left_pad
from sorrybench.resumable import process_resumably, settings_path_for
from tests.sorrybench_helpers import tiny_causal_lm

PROMPTS = [{"prompt_index": i, "category": "1", "prompt": text} for i, text in
           enumerate(["Tell me a joke.", "How do I bake bread at home with very little equipment?", "Hi", "Why?"])]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm()


def test_left_pad_literal():
    input_ids, attention_mask = left_pad([[5, 6], [7]], pad_id=0)
    assert input_ids.tolist() == [[5, 6], [0, 7]]  # row 1: one pad on the left
    assert attention_mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], pad_id=0)


def test_generation_settings_validation():
    with pytest.raises(ValueError, match="identical responses"):
        GenerationSettings(num_responses=2, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerationSettings(max_new_tokens=0)


def test_greedy_batch_equals_one_by_one(tiny):
    """Left padding with the attention mask does not change greedy outputs of the shorter prompts."""
    model, tokenizer = tiny
    texts = [p["prompt"] for p in PROMPTS]
    batched = generate_responses(model, tokenizer, texts, temperature=0.0, max_new_tokens=6)
    single = [generate_responses(model, tokenizer, [t], temperature=0.0, max_new_tokens=6)[0] for t in texts]
    assert batched == single
    assert encode_prompt(tokenizer, "Hi") == tokenizer("Hi\n")["input_ids"]  # no chat template: "prompt\n"


def test_sampling_is_seeded(tiny):
    model, tokenizer = tiny
    texts = [p["prompt"] for p in PROMPTS[:2]]
    first = generate_responses(model, tokenizer, texts, num_responses=2, max_new_tokens=5, seed=3)
    assert first == generate_responses(model, tokenizer, texts, num_responses=2, max_new_tokens=5, seed=3)
    assert len(first) == 2 and all(len(responses) == 2 for responses in first)
    assert first != generate_responses(model, tokenizer, texts, num_responses=2, max_new_tokens=5, seed=4)


def test_resumed_generation_matches_uninterrupted(tiny, tmp_path):
    model, tokenizer = tiny
    settings = GenerationSettings(num_responses=2, max_new_tokens=4, batch_size=2, seed=1)
    full = generate_for_prompts(model, tokenizer, PROMPTS, tmp_path / "full.jsonl", settings, model_name="tiny-gpt2")
    partial_path = tmp_path / "partial.jsonl"
    generate_for_prompts(model, tokenizer, PROMPTS[:2], partial_path, settings, model_name="tiny-gpt2")
    with partial_path.open("a") as handle:
        handle.write('{"prompt_index": 2, "respon')  # a run killed mid-write
    resumed = generate_for_prompts(model, tokenizer, PROMPTS, partial_path, settings, model_name="tiny-gpt2")
    assert resumed == full
    assert [r["prompt_index"] for r in read_jsonl(partial_path)] == [0, 1, 2, 3]
    assert json.loads(settings_path_for(partial_path).read_text())["model"] == "tiny-gpt2"
    other = GenerationSettings(num_responses=2, max_new_tokens=5, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="max_new_tokens: stored 4, now 5"):
        generate_for_prompts(model, tokenizer, PROMPTS, partial_path, other, model_name="tiny-gpt2")
    bigger_batches = GenerationSettings(num_responses=2, max_new_tokens=4, batch_size=3, seed=1)
    assert generate_for_prompts(model, tokenizer, PROMPTS, partial_path, bigger_batches, model_name="tiny-gpt2") == full


def test_process_resumably_only_processes_missing_items(tmp_path):
    items = [{"key": i, "value": i * 10} for i in range(5)]
    calls = []

    def double(batch):
        calls.append([item["key"] for item in batch])
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted during the second batch
        return [{"key": item["key"], "doubled": 2 * item["value"]} for item in batch]

    path = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        process_resumably(items, key="key", output_path=path, process_batch=double, batch_size=2, settings={})
    assert [r["key"] for r in read_jsonl(path)] == [0, 1]
    records = process_resumably(items[::-1], key="key", output_path=path, process_batch=double, batch_size=2,
                                settings={})
    assert calls[2:] == [[4, 3], [2]]  # only the missing keys, in the order given
    assert [r["doubled"] for r in records] == [80, 60, 40, 20, 0]  # returned in the order of `items`
    with pytest.raises(ValueError, match="duplicate"):
        process_resumably(items + items[:1], key="key", output_path=path, process_batch=double, batch_size=2,
                          settings={})
