"""Preference data sets: load (Hub id or local file), format the prompt, tokenize prompt and response separately.

Used by the CHES script (`compute_preference_similarity_per_example.py`) and the dataset-level trainer, so
both see exactly the same text and token ids.

    examples = load_preference_examples("data_files/ultrafeedback/train_1000.jsonl", "ultrafeedback",
                                        num_samples=100, seed=0)
    hh = load_preference_examples("Anthropic/hh-rlhf/harmless-base", "hh_rlhf", split="test")  # Hub, data_dir
    pair = tokenize_pair(tokenizer, examples[0], max_input_length=512)   # TokenizedPair, or a str skip reason

Formats (`dataset_format`):
    prompt_chosen_rejected  columns `prompt`, `chosen`, `rejected` (strings).
    ultrafeedback           `prompt` plus `chosen`/`rejected` as strings (the local sample) or as message lists
                            (Hub `HuggingFaceH4/ultrafeedback_binarized`, split e.g. `train_prefs`); the response
                            is the content of the last assistant message. Without `prompt`, the last user
                            message before it is used.
    hh_rlhf                 `chosen`/`rejected` whole dialogues "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt
                            is their longest common prefix cut after its last "\\n\\nAssistant:"; the responses
                            are the rest (usually starting with a space). The prompt is used as plain text (no
                            chat template: it already carries the Human/Assistant markers).
    sorrybench_prefs        `query`, `chosen`, `rejected`, `category` (written by the SORRY-Bench preference script).
Columns not used for the text are kept in `PreferenceExample.metadata` (a nested `metadata` dict is merged in).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from common.data_locations import is_hub_dataset_id, load_hub_dataset, locate_data_file, parse_hub_dataset

DATASET_FORMATS = ("prompt_chosen_rejected", "ultrafeedback", "hh_rlhf", "sorrybench_prefs")
LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".csv")
HH_ASSISTANT_TURN = "\n\nAssistant:"
PLAIN_PROMPT_SEPARATOR = "\n"  # appended to the prompt when the tokenizer has no chat template
PROMPT_IS_DIALOGUE_KEY = "prompt_is_dialogue"  # metadata flag: prompt is used as plain text (hh_rlhf)

_TEXT_COLUMNS = {
    "prompt_chosen_rejected": ("prompt", "chosen", "rejected"),
    "ultrafeedback": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "sorrybench_prefs": ("query", "chosen", "rejected"),
}


@dataclass
class PreferenceExample:
    """One preference pair.

    Attributes:
        prompt: User turn text (hh_rlhf: the dialogue up to and including the last "\\n\\nAssistant:").
        chosen: Preferred response text y+.
        rejected: Dispreferred response text y-.
        source_index: 0-based row of the loaded file / Hub split (not a `source_index` column of the file,
            which, if present, stays in `metadata`).
        metadata: Remaining columns of the row (e.g. `category`, `score_chosen`).
    """

    prompt: str
    chosen: str
    rejected: str
    source_index: int
    metadata: dict = field(default_factory=dict)


@dataclass
class TokenizedPair:
    """Token ids of one pair; the model input for a response is `prompt_ids + chosen_ids` (or rejected).

    Attributes:
        prompt_ids: Formatted prompt tokens (>= 1 token).
        chosen_ids: Preferred response tokens, EOS appended (unless truncated away), >= 1 token.
        rejected_ids: Dispreferred response tokens, same rules.
        source_index: `PreferenceExample.source_index` of the pair.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source_index: int


def _read_local_rows(path: str) -> list[dict]:
    """Read a local .json (list of records, or JSON lines), .jsonl, .jsonl.gz/.json.gz or .csv file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.endswith(".csv"):
            return list(csv.DictReader(f))
        text = f.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines stored under .json (the Hugging Face convention)
        if isinstance(data, list):
            return data
        if data is not None:
            raise ValueError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: invalid JSON ({error})") from error
    return rows


def _is_local(dataset: str) -> bool:
    """A file name, not a Hub id (a file suffix, a local path prefix, or a place of the data-location rule holds it)."""
    return not is_hub_dataset_id(dataset)


def _load_rows(dataset: str, split: str) -> tuple[Any, str]:
    """Return (indexable rows, description used in error messages).

    Local files are found by the data-location rule (`common.data_locations.locate_data_file`: the path, then
    data_files/, then $LD_DATA_DIR, then the file's Hub source); Hub ids (`org/name`, `org/name/data_dir`,
    `org/name:config`) go to `datasets.load_dataset` (`load_hub_dataset`). Either raises DataNotFoundError
    naming what was tried and how to get the data.
    """
    if _is_local(dataset):
        path = str(locate_data_file(dataset))
        if not os.path.isfile(path):
            raise ValueError(f"dataset {dataset}: {path} is not a file; expected a {'/'.join(LOCAL_SUFFIXES)} file")
        if not path.endswith(LOCAL_SUFFIXES):
            raise ValueError(f"dataset file {path}: unsupported suffix; expected one of {LOCAL_SUFFIXES}")
        return _read_local_rows(path), f"file {path}"
    return load_hub_dataset(dataset, split), f"{parse_hub_dataset(dataset).describe()} (split {split})"


def _response_text(value: Any, column: str, where: str) -> str:
    """A response given as a string, or as a message list whose last assistant message is the response."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return str(message.get("content", ""))
        raise ValueError(f"{where}: column `{column}` is a message list without an assistant message")
    raise ValueError(f"{where}: column `{column}` must be a string or a message list, got {type(value).__name__}")


def _last_user_message(messages: Any, where: str) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    raise ValueError(f"{where}: no column `prompt` and no user message in `chosen` to take the prompt from")


def _split_hh_dialogues(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """Split two HH dialogues into (shared prompt ending with the last common Assistant turn, y+, y-)."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT_TURN)
    if cut < 0:
        raise ValueError(f"{where}: `chosen` and `rejected` share no prefix ending in {HH_ASSISTANT_TURN!r}")
    cut += len(HH_ASSISTANT_TURN)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _row_to_example(row: dict, dataset_format: str, source_index: int, where: str) -> PreferenceExample:
    for column in _TEXT_COLUMNS[dataset_format]:
        if column not in row or row[column] is None:
            raise ValueError(f"{where}: missing column `{column}` (format {dataset_format}); "
                             f"row has columns {sorted(row)}")
    metadata: dict = {}
    if dataset_format == "hh_rlhf":
        prompt, chosen, rejected = _split_hh_dialogues(str(row["chosen"]), str(row["rejected"]), where)
        metadata[PROMPT_IS_DIALOGUE_KEY] = True
        used = {"chosen", "rejected"}
    else:
        prompt_column = "query" if dataset_format == "sorrybench_prefs" else "prompt"
        chosen = _response_text(row["chosen"], "chosen", where)
        rejected = _response_text(row["rejected"], "rejected", where)
        if dataset_format == "prompt_chosen_rejected" and not isinstance(row["chosen"], str):
            raise ValueError(f"{where}: format prompt_chosen_rejected needs string `chosen`/`rejected`; "
                             "use --dataset_format ultrafeedback for message lists")
        if row.get(prompt_column) is not None:
            prompt = row[prompt_column]
            if not isinstance(prompt, str):
                raise ValueError(f"{where}: column `{prompt_column}` must be a string, got {type(prompt).__name__}")
        else:
            prompt = _last_user_message(row["chosen"], where)
        used = {prompt_column, "chosen", "rejected"}
    for key, value in row.items():
        if key == "metadata" and isinstance(value, dict):
            metadata.update(value)
        elif key not in used:
            metadata[key] = value
    return PreferenceExample(prompt, chosen, rejected, source_index, metadata)


def load_preference_examples(dataset: str, dataset_format: str, *, split: str = "train",
                             num_samples: int | None = None, seed: int = 0) -> list[PreferenceExample]:
    """Load preference pairs from a Hub id (`datasets.load_dataset`) or a local file (the data-location rule).

    Args:
        dataset: Hub id (`org/name`; a data directory `org/name/data_dir`, e.g. `Anthropic/hh-rlhf/harmless-base`;
            a configuration `org/name:config`), or a local .json/.jsonl/.jsonl.gz/.json.gz/.csv file, found as
            given, under data_files/, or under $LD_DATA_DIR (`common/data_locations.py`; `split` is ignored).
        dataset_format: One of DATASET_FORMATS (see the module docstring).
        split: Hub split name (UltraFeedback binarized: `train_prefs` / `test_prefs`).
        num_samples: Draw this many rows uniformly without replacement (`random.Random(seed).sample`),
            returned in increasing `source_index` order; None = all rows. Must not exceed the row count.
        seed: Seed of the subsample.

    Returns:
        The examples; `source_index` is the row of the file / split.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format: unknown {dataset_format!r}; expected one of {DATASET_FORMATS}")
    rows, description = _load_rows(dataset, split)
    total = len(rows)
    if num_samples is None:
        indices: Iterable[int] = range(total)
    else:
        if not 0 < num_samples <= total:
            raise ValueError(f"num_samples must be in [1, {total}] for {description} ({total} rows), "
                             f"got {num_samples}; use None for all rows")
        indices = sorted(random.Random(seed).sample(range(total), num_samples))
    return [_row_to_example(dict(rows[i]), dataset_format, i, f"{description}, row {i}") for i in indices]


def format_prompt(tokenizer, prompt: str, *, is_dialogue: bool = False) -> str:
    """The prompt text exactly as the model sees it (before tokenization).

    - `is_dialogue` (hh_rlhf prompts): the text unchanged; it already ends with "\\n\\nAssistant:".
    - tokenizer with a chat template: one user turn plus the generation prompt
      (`apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)`).
    - otherwise: `prompt + PLAIN_PROMPT_SEPARATOR` ("\\n").
    """
    if is_dialogue:
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + PLAIN_PROMPT_SEPARATOR


def _encode_prompt(tokenizer, example: PreferenceExample) -> list[int]:
    """Prompt ids. Special tokens (e.g. BOS) are added by the tokenizer only for plain text; a rendered chat
    template already contains them."""
    is_dialogue = bool(example.metadata.get(PROMPT_IS_DIALOGUE_KEY, False))
    text = format_prompt(tokenizer, example.prompt, is_dialogue=is_dialogue)
    uses_template = not is_dialogue and bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not uses_template)["input_ids"]


def _encode_response(tokenizer, text: str) -> list[int]:
    """Response ids, tokenized on their own (no special tokens), then EOS appended if the tokenizer has one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def tokenize_pair(tokenizer, example: PreferenceExample, max_input_length: int | None) -> TokenizedPair | str:
    """Tokenize prompt and responses separately (no BPE merge across the boundary) and apply truncation.

    Truncation, for L = max_input_length, P = prompt length, R = longest response length (EOS included),
    when P + R > L:
      1. the prompt keeps its last min(P, max(L - R, L // 2, 1)) tokens (cut from the left; the end holds the
         generation prompt);
      2. each response keeps its first L - (kept prompt length) tokens (cut from the right; EOS may go).
    Every sequence prompt + response then has <= L tokens, >= 1 prompt and >= 1 response token.

    Returns:
        The TokenizedPair, or a string naming why the pair is skipped: empty chosen/rejected response,
        empty prompt, chosen == rejected (before or after truncation).
    """
    if max_input_length is not None and max_input_length < 2:
        raise ValueError(f"max_input_length must be >= 2 (one prompt + one response token) or None, "
                         f"got {max_input_length}")
    for name, text in (("chosen", example.chosen), ("rejected", example.rejected)):
        if not text.strip():
            return f"empty {name} response"
    if example.chosen == example.rejected:
        return "chosen and rejected responses are identical"
    prompt_ids = _encode_prompt(tokenizer, example)
    if not prompt_ids:
        return "empty prompt (no tokens)"
    chosen_ids = _encode_response(tokenizer, example.chosen)
    rejected_ids = _encode_response(tokenizer, example.rejected)
    longest = max(len(chosen_ids), len(rejected_ids))
    if max_input_length is not None and len(prompt_ids) + longest > max_input_length:
        keep_prompt = min(len(prompt_ids), max(max_input_length - longest, max_input_length // 2, 1))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        response_budget = max_input_length - keep_prompt
        chosen_ids, rejected_ids = chosen_ids[:response_budget], rejected_ids[:response_budget]
        if chosen_ids == rejected_ids:
            return f"chosen and rejected identical after truncation to {max_input_length} tokens"
    if chosen_ids == rejected_ids:
        return "chosen and rejected token ids are identical"
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, example.source_index)
