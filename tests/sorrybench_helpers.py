"""Shared helpers of the SORRY-Bench tests: tiny random models and a fake judge (random models write gibberish,
so tests that need both labels use a judge that decides by a marker instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import transformers

from common.data_locations import find_local_data_file
from common.models import gpt2_tokenizer, load_model_and_tokenizer
from sorrybench.judges import COMPLIANCE, REFUSAL, JudgeResult


PROMPTS_FILE = "data_files/sorrybench/sorry_bench_202406.csv"
# 24 prompts written for the tests in the SORRY-Bench schema (`category` "1".."4", `prompt`): no public data needed.
FIXTURE_PROMPTS_FILE = Path(__file__).resolve().parent / "fixtures" / "sorrybench_prompts.csv"


def sorrybench_prompts_file() -> str:
    """The real SORRY-Bench prompts by the data-location rule; the test is skipped (with the reason) without them."""
    import pytest

    found = find_local_data_file(PROMPTS_FILE)
    if found is None:
        pytest.skip(f"{PROMPTS_FILE} not found (set LD_DATA_DIR to a folder holding sorrybench/sorry_bench_202406.csv)")
    return str(found)


def fixture_prompts_file() -> str:
    """The tests' own 24 SORRY-Bench-schema prompts (always present)."""
    return str(FIXTURE_PROMPTS_FILE)


def tiny_causal_lm():
    """`tiny-gpt2` from common/models.py (random init, fixed seed)."""
    return load_model_and_tokenizer("tiny-gpt2")


def tiny_classifier(num_labels: int, id2label: dict[int, str] | None = None):
    """A random 2-layer GPT-2 sequence classifier (seed 0) with the GPT-2 tokenizer."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=256, num_labels=num_labels,
                                     id2label=id2label, label2id={v: k for k, v in (id2label or {}).items()} or None)
    tokenizer = gpt2_tokenizer()
    config.pad_token_id = tokenizer.eos_token_id
    return transformers.GPT2ForSequenceClassification(config).eval(), tokenizer


class EvenLengthRefusalJudge:
    """Fake judge: refusal iff the response has an even number of characters (gives both labels on
    gibberish), score = 1.0 / 0.0."""

    name = "even_length_fake"

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[JudgeResult]:
        return [JudgeResult(REFUSAL, 1.0, "even") if len(r) % 2 == 0 else JudgeResult(COMPLIANCE, 0.0, "odd")
                for r in responses]
