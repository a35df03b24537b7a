"""Preference data sets: load (Hub id or local file), format the prompt, tokenize prompt and response separately.

Used by the CHES script (`compute_preference_similarity_per_example.py`) and the dataset-level trainer, so
both see exactly the same text and token ids.

    examples = load_preference_examples("data_files/ultrafeedback/train_1000.jsonl", "ultrafeedback",
                                        num_samples=100, seed=0)
    hh = load_preference_examples("Anthropic/hh-rlhf/harmless-base", "hh_rlhf", split="test")  # Hub, data_dir
    pair = tokenize_pair(tokenizer, examples[0], max_input_length=512)   # TokenizedPair, or a str skip reason
(formatting and tokenization: `common/preference_tokenization.py`, re-exported here).

Formats (`dataset_format`; `infer_dataset_format` picks one from a Hub id or a file's first row):
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
    alpaca_farm             `instruction`, `input`, `output_1`, `output_2`, `preference` (Hub `tatsu-lab/alpaca_farm`,
                            config `alpaca_human_preference`, split `preference`): prompt = instruction, plus
                            "\\n" + input when input is not empty; chosen = output_<preference>, rejected = the other.
Columns not used for the text are kept in `PreferenceExample.metadata` (a nested `metadata` dict is merged in).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from common.data_locations import is_hub_dataset_id, load_hub_dataset, locate_data_file, parse_hub_dataset

DATASET_FORMATS = ("prompt_chosen_rejected", "ultrafeedback", "hh_rlhf", "sorrybench_prefs", "alpaca_farm")
LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".csv")
HH_ASSISTANT_TURN = "\n\nAssistant:"
PLAIN_PROMPT_SEPARATOR = "\n"  # appended to the prompt when the tokenizer has no chat template
PROMPT_IS_DIALOGUE_KEY = "prompt_is_dialogue"  # metadata flag: prompt is used as plain text (hh_rlhf)
SAMPLE_RULES = ("python_random", "torch_randperm")
# Hub data sets the reference implementation names, with the config / split / format it loads them with.
HUB_CONFIG_NAMES = {"tatsu-lab/alpaca_farm": "alpaca_human_preference"}
HUB_DEFAULT_SPLITS = {"tatsu-lab/alpaca_farm": "preference", "HuggingFaceH4/ultrafeedback_binarized": "train_prefs"}
HUB_FORMATS = {"tatsu-lab/alpaca_farm": "alpaca_farm", "HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback",
               "Anthropic/hh-rlhf": "hh_rlhf"}

_TEXT_COLUMNS = {
    "prompt_chosen_rejected": ("prompt", "chosen", "rejected"),
    "ultrafeedback": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "sorrybench_prefs": ("query", "chosen", "rejected"),
    "alpaca_farm": ("instruction", "output_1", "output_2", "preference"),
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
        chosen_ids: Preferred response tokens, >= 1 token, ending with the EOS (for training pairs it may have
            been truncated away; CHES pairs, `eos_after_truncation`, always end with it: see ches/ches.py).
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
    config_name = HUB_CONFIG_NAMES.get(parse_hub_dataset(dataset).repo_id)
    return load_hub_dataset(dataset, split, default_config_name=config_name), f"{parse_hub_dataset(dataset).describe()} (split {split})"


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


def _alpaca_farm_texts(row: dict, where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of an AlpacaFarm human-preference row, as the reference builds them: prompt =
    instruction, plus "\\n" + input when input is not empty; `preference` 1 -> output_1 preferred, else output_2."""
    instruction, input_text = str(row["instruction"]), str(row.get("input") or "")
    try:
        preference = int(row["preference"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column `preference` must be 1 or 2, got {row['preference']!r}") from None
    if preference not in (1, 2):
        raise ValueError(f"{where}: column `preference` must be 1 or 2, got {preference}")
    first, second = str(row["output_1"]), str(row["output_2"])
    chosen, rejected = (first, second) if preference == 1 else (second, first)
    return (f"{instruction}\n{input_text}" if input_text else instruction), chosen, rejected


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
    elif dataset_format == "alpaca_farm":
        prompt, chosen, rejected = _alpaca_farm_texts(row, where)
        used = {"instruction", "input", "output_1", "output_2"}
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


def sample_row_indices(total: int, num_samples: int | None, seed: int, rule: str = "python_random") -> list[int]:
    """Rows to load out of `total`.

    Rules:
        python_random: `sorted(random.Random(seed).sample(range(total), num_samples))`; `num_samples` must be in
            [1, total].
        torch_randperm: the reference implementation's draw, in its order (not sorted):
            `torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:min(num_samples, total)]`, and
            an unseeded `torch.randperm(total)` when seed <= 0 (then not reproducible; the rows are saved).
    `num_samples` None = all rows, in order (both rules).
    """
    if rule not in SAMPLE_RULES:
        raise ValueError(f"sample rule: unknown {rule!r}; expected one of {SAMPLE_RULES}")
    if num_samples is None:
        return list(range(total))
    if rule == "torch_randperm":
        import torch

        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (or None for all rows), got {num_samples}")
        generator = torch.Generator().manual_seed(seed) if seed > 0 else None
        return torch.randperm(total, generator=generator)[:min(num_samples, total)].tolist()
    if not 0 < num_samples <= total:
        raise ValueError(f"num_samples must be in [1, {total}] ({total} rows), got {num_samples}; "
                         "use None for all rows")
    return sorted(random.Random(seed).sample(range(total), num_samples))


def load_preference_examples(dataset: str, dataset_format: str, *, split: str = "train",
                             num_samples: int | None = None, seed: int = 0, sample_rule: str = "python_random",
                             column_renames: dict[str, str] | None = None) -> list[PreferenceExample]:
    """Load preference pairs from a Hub id (`datasets.load_dataset`, with `HUB_CONFIG_NAMES`' configuration for
    known repositories) or a local file (the data-location rule).

    Args:
        dataset: Hub id (`org/name`; a data directory `org/name/data_dir`, e.g. `Anthropic/hh-rlhf/harmless-base`;
            a configuration `org/name:config`), or a local .json/.jsonl/.jsonl.gz/.json.gz/.csv file, found as
            given, under data_files/, or under $LD_DATA_DIR (`common/data_locations.py`; `split` is ignored).
        dataset_format: One of DATASET_FORMATS (see the module docstring).
        split: Hub split name (UltraFeedback binarized: `train_prefs` / `test_prefs`; AlpacaFarm: `preference`).
        num_samples: Rows to draw (`sample_row_indices` with `sample_rule`); None = all rows.
        seed: Seed of the draw.
        sample_rule: `python_random` (sorted seeded sample) or `torch_randperm` (the reference's draw and order).
        column_renames: {column in the file: column the format expects}, applied to every row first (the
            reference's `--chat_chosen_field` / `--chat_rejected_field`).

    Returns:
        The examples in draw order; `source_index` is the row of the file / split.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format: unknown {dataset_format!r}; expected one of {DATASET_FORMATS}")
    rows, description = _load_rows(dataset, split)
    try:
        indices = sample_row_indices(len(rows), num_samples, seed, sample_rule)
    except ValueError as error:
        raise ValueError(f"{description}: {error}") from None
    examples = []
    for i in indices:
        row = dict(rows[i])
        for old, new in (column_renames or {}).items():
            if old in row:
                row[new] = row.pop(old)
        examples.append(_row_to_example(row, dataset_format, i, f"{description}, row {i}"))
    return examples


def infer_dataset_format(dataset: str, split: str = "train", column_renames: dict[str, str] | None = None) -> str:
    """The format of `dataset`: a known Hub id (`HUB_FORMATS`), else from the columns of its first row:
    instruction/output_1/output_2/preference -> alpaca_farm; query/chosen/rejected -> sorrybench_prefs;
    chosen/rejected dialogues starting with "\\n\\nHuman:" and no prompt -> hh_rlhf; message lists or
    `score_chosen` (in the row or its `metadata`) -> ultrafeedback; prompt/chosen/rejected strings ->
    prompt_chosen_rejected. `column_renames` as in `load_preference_examples`, applied first.

    Raises:
        ValueError: no rule matches (the message lists the row's columns and asks for --dataset_format).
    """
    if dataset in HUB_FORMATS:
        return HUB_FORMATS[dataset]
    rows, description = _load_rows(dataset, split)
    if len(rows) == 0:
        raise ValueError(f"{description} has no rows")
    row = dict(rows[0])
    for old, new in (column_renames or {}).items():
        if old in row:
            row[new] = row.pop(old)
    columns = set(row)
    metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    if {"instruction", "output_1", "output_2", "preference"} <= columns:
        return "alpaca_farm"
    if {"query", "chosen", "rejected"} <= columns:
        return "sorrybench_prefs"
    if {"chosen", "rejected"} <= columns:
        if isinstance(row["chosen"], list) or "score_chosen" in columns or "score_chosen" in metadata:
            return "ultrafeedback"
        if "prompt" in columns:
            return "prompt_chosen_rejected"
        if str(row["chosen"]).startswith("\n\nHuman:"):
            return "hh_rlhf"
    raise ValueError(f"{description}: cannot tell the data set format from the columns {sorted(columns)}; pass "
                     f"--dataset_format (one of {', '.join(DATASET_FORMATS)})")


# Formatting and tokenization live in common/preference_tokenization.py (which imports the dataclasses above);
# callers have always imported them from here, so they resolve lazily (PEP 562) without an import cycle.
_TOKENIZATION_NAMES = ("PAPER_ASSISTANT_TOKEN", "PAPER_PROMPTER_TOKEN", "PROMPT_FORMATS", "TRUNCATIONS",
                       "TokenizationOptions", "format_prompt", "prepare_tokenizer_for_prompt_format", "tokenize_pair")


def __getattr__(name: str) -> Any:
    if name in _TOKENIZATION_NAMES:
        from common import preference_tokenization

        return getattr(preference_tokenization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
