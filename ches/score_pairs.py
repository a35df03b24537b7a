"""CHES and the other similarity measures for a whole data set of strings, in TRL's preference formats.

    from ches import score_pairs, lowest_k, export_for_trl
    scored = score_pairs("smollm2-135m-instruct", None, "data_files/ultrafeedback/train_1000.jsonl")
    export_for_trl(lowest_k(scored, 64), "outputs/lowest_ches.jsonl")      # train TRL on the 64 lowest-CHES pairs

`pairs` may be a `datasets.Dataset`, a list of row dicts, a local file (.json/.jsonl/.parquet/.csv, found through
`common.data_locations`) or a Hub dataset id (with `name` = config, `data_dir`, `split`). Rows are in any of TRL's
preference formats:
    standard, explicit prompt      {"prompt": str, "chosen": str, "rejected": str}
    standard, implicit prompt      {"chosen": str, "rejected": str}: the prompt is their longest common prefix, cut
                                   back by one character when that prefix ends in a space (the response keeps it)
    conversational, explicit       {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
    conversational, implicit       {"chosen": [messages], "rejected": [messages]}: the prompt is the longest common
                                   run of leading messages
A response given as messages is the content of its last assistant message. A prompt of one user message is that
message's text; a longer dialogue is rendered with the tokenizer's chat template (generation prompt added) and used
as plain text.

Scores follow `compute_preference_similarity_per_example.py` through the same shared functions: tokenisation with
`common.preference_tokenization.SIMILARITY_SCRIPT_OPTIONS` (the reference's "paper" prompt format and truncation,
EOS appended after truncation, identical responses scored: CHES 0), changed only by the same three settings as the
script's flags (`prompt_format`, `truncation`, `skip_identical_pairs`), and the measures of
`ches.ches.compute_pair_measures`. A prompt/chosen/rejected string row gets exactly the scores, lengths and skip
reason that the script (`--dataset_format prompt_chosen_rejected`, same settings) writes for it.
In place, as the script does: with `prompt_format="paper"` a tokenizer without a chat template gets the special
tokens `<|prompter|>` and `<|assistant|>` (and a pad / EOS token when missing) and the model's embeddings are
resized to match (`prepare_tokenizer_for_prompt_format`; seeded, so the new rows equal the script's). A chat
model, or `prompt_format="plain"`, is left unchanged.

Returned: the input rows with the columns `SCORE_COLUMNS` (NaN for a skipped row), `prompt_length`, `chosen_length`,
`rejected_length` (tokens, -1 when skipped) and `skip_reason` ("" when scored). Filters (`lowest_k`,
`quantile_window`, `within_threshold`) return a `Dataset` of the kept rows in their original order.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ches.ches import MEASURE_NAMES, compute_pair_measures, select_lowest_k, select_quantile_window
from common.preference_data import PROMPT_IS_DIALOGUE_KEY, PreferenceExample, TokenizedPair
from common.preference_tokenization import (SIMILARITY_SCRIPT_OPTIONS, TokenizationOptions,
                                            prepare_tokenizer_for_prompt_format, tokenize_pair)

# Column of the scored Dataset -> the measure of `ches.ches` it holds (MEASURE_NAMES, one value per row).
SCORE_COLUMNS = {"ches": "ches_scores", "ln_ches": "ln_ches_scores",
                 "minus_normalized_edit_distance": "minus_normalized_edit_distances",
                 "last_hidden_embedding_inner_prod": "last_hidden_embedding_inner_prods"}
LENGTH_COLUMNS = ("prompt_length", "chosen_length", "rejected_length")
ADDED_COLUMNS = tuple(SCORE_COLUMNS) + LENGTH_COLUMNS + ("skip_reason",)
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen rest, rejected rest) of an implicit-prompt pair: the longest common prefix of two strings or
    two message lists. For strings, a prefix ending in a space gives that space back to the responses.

    Example: "Sky? It is blue" / "Sky? It is green" -> ("Sky? It is", " blue", " green").
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if isinstance(chosen, str) and shared > 0 and chosen[shared - 1] == " ":
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _response_text(value: Any, column: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if _is_messages(value):
        replies = [m["content"] for m in value if m["role"] == "assistant"]
        if replies:
            return str(replies[-1])
    raise ValueError(f"{where}: `{column}` must be a string or a message list with an assistant message, got "
                     f"{value!r:.80}")


def _prompt_fields(prompt: Any, tokenizer, where: str) -> tuple[str, dict]:
    """(prompt text, metadata flags) for `PreferenceExample`: a string or a single user turn as is, a longer
    dialogue rendered by the chat template and flagged as plain text."""
    if isinstance(prompt, str):
        return prompt, {}
    if not _is_messages(prompt) or not prompt:
        raise ValueError(f"{where}: `prompt` must be a string or a non-empty message list, got {prompt!r:.80}")
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return str(prompt[0]["content"]), {}
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: a {len(prompt)}-message prompt needs a tokenizer with a chat template; this "
                         f"tokenizer has none (use a chat model, or give the prompt as one user message)")
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text, {PROMPT_IS_DIALOGUE_KEY: True}


def preference_example(row: dict, index: int, tokenizer) -> PreferenceExample:
    """One row in a TRL preference format (module docstring) as the toolkit's `PreferenceExample`."""
    where = f"row {index}"
    for column in ("chosen", "rejected"):
        if row.get(column) is None:
            raise ValueError(f"{where}: missing column `{column}`; expected TRL preference columns prompt (optional), "
                             f"chosen, rejected, got {sorted(row)}")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None or (_is_messages(chosen) and not _is_messages(prompt)):  # implicit prompt (TRL's rule)
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    text, flags = _prompt_fields(prompt, tokenizer, where)
    metadata = {key: value for key, value in row.items() if key not in ("prompt", "chosen", "rejected")}
    return PreferenceExample(text, _response_text(chosen, "chosen", where), _response_text(rejected, "rejected", where),
                             index, {**metadata, **flags})


def load_pairs(pairs: Any, *, split: str = "train", name: str | None = None, data_dir: str | None = None):
    """`pairs` as a `datasets.Dataset`: a Dataset as is, a list of dicts, a local file or a Hub id."""
    from datasets import Dataset, load_dataset

    from common.data_locations import is_hub_dataset_id, locate_data_file

    if isinstance(pairs, Dataset):
        return pairs
    if isinstance(pairs, list):
        return Dataset.from_list(pairs)
    if not isinstance(pairs, (str, Path)):
        raise TypeError(f"pairs: expected a datasets.Dataset, a list of dicts, a file path or a Hub id, got "
                        f"{type(pairs).__name__}")
    if is_hub_dataset_id(str(pairs)) and not os.path.exists(pairs):
        return load_dataset(str(pairs), name=name, data_dir=data_dir, split=split)
    path = locate_data_file(pairs)
    suffix = next((s for s in FILE_BUILDERS if path.name.endswith(s) or path.name.endswith(s + ".gz")), None)
    if suffix is None:
        raise ValueError(f"pairs: {path} has an unsupported suffix; expected one of {sorted(FILE_BUILDERS)}")
    return load_dataset(FILE_BUILDERS[suffix], data_files=str(path), split="train")


def load_scoring_model(spec: str, *, dtype: str = "float32", device: str = "cpu"):
    """(model in eval mode, tokenizer) for "MODEL" or "BASE@ADAPTER" (a LoRA adapter directory, or a full
    checkpoint directory when it has no adapter_config.json), as the refusal-rate script reads them."""
    from common.models import load_model_and_tokenizer

    base, _, checkpoint = spec.partition("@")
    is_lora = bool(checkpoint) and (Path(checkpoint) / "adapter_config.json").is_file()
    model, tokenizer = load_model_and_tokenizer(base, checkpoint=checkpoint or None, is_lora_checkpoint=is_lora,
                                                dtype=dtype, device=device)
    return model.eval(), tokenizer


def scoring_options(prompt_format: str = "paper", truncation: str = "paper",
                    skip_identical_pairs: bool = False) -> TokenizationOptions:
    """The similarity script's tokenisation rules (`SIMILARITY_SCRIPT_OPTIONS`) with its three flags applied."""
    return dataclasses.replace(SIMILARITY_SCRIPT_OPTIONS, prompt_format=prompt_format, truncation=truncation,
                               skip_identical=skip_identical_pairs)


def score_pairs(model: Any, tokenizer: Any, pairs: Any, *, max_input_length: int | None = 512,
                prompt_format: str = "paper", truncation: str = "paper", skip_identical_pairs: bool = False,
                batch_size: int | None = None, split: str = "train", name: str | None = None,
                data_dir: str | None = None, dtype: str = "float32", device: str = "cpu",
                pair_threads: int | None = None):
    """Score every preference pair of `pairs` with all similarity measures; returns the Dataset with score columns.

    Args:
        model: A causal LM (tokenizer required), or a model spec "MODEL" / "BASE@ADAPTER" (loaded with `dtype` on
            `device`; `tokenizer` may then be None).
        tokenizer: The model's tokenizer (None with a model spec: the loaded one is used).
        pairs: Dataset, list of row dicts, local file or Hub id (`split`, `name` = config, `data_dir` for the Hub).
        max_input_length: Max tokens of prompt + one response, >= 2; None = no limit. With the paper truncation
            each response is cut on the right and a prompt longer than this skips the row (the script's rule).
        prompt_format, truncation, skip_identical_pairs: As the script's flags of these names (defaults = the
            script's: "paper", "paper", False); see `common.preference_tokenization`.
        batch_size: Pairs per forward; None = 1 on CPU (prompt key/value cache path), 8 on an accelerator.
        pair_threads: CPU threads for the batch-1 path (see `ches.ches.iterate_pair_measures`).

    Returns:
        `datasets.Dataset`: the input rows plus `ADDED_COLUMNS` (module docstring), in the input order.
    """
    if isinstance(model, str):
        model, loaded_tokenizer = load_scoring_model(model, dtype=dtype, device=device)
        tokenizer = tokenizer or loaded_tokenizer
    if tokenizer is None:
        raise ValueError("score_pairs: pass the tokenizer of `model` (or a model spec string to load both)")
    options = scoring_options(prompt_format, truncation, skip_identical_pairs)
    dataset = load_pairs(pairs, split=split, name=name, data_dir=data_dir)
    examples = [preference_example(dict(row), i, tokenizer) for i, row in enumerate(dataset)]  # bad rows: before
    prepare_tokenizer_for_prompt_format(tokenizer, model, options.prompt_format)  # in place (docstring)
    tokenized: list[TokenizedPair | str] = [tokenize_pair(tokenizer, example, max_input_length, options)
                                            for example in examples]
    rows = [i for i, pair in enumerate(tokenized) if not isinstance(pair, str)]
    if batch_size is None:
        batch_size = 1 if next(model.parameters()).device.type == "cpu" else 8
    was_training = model.training
    model.eval()
    try:
        measures = compute_pair_measures(model, [tokenized[i] for i in rows], batch_size=batch_size,
                                         pair_threads=pair_threads) if rows else {m: [] for m in MEASURE_NAMES}
    finally:
        model.train(was_training)
    columns: dict[str, list] = {column: [math.nan] * len(dataset) for column in SCORE_COLUMNS}
    columns.update({column: [-1] * len(dataset) for column in LENGTH_COLUMNS})
    columns["skip_reason"] = [pair if isinstance(pair, str) else "" for pair in tokenized]
    for position, row in enumerate(rows):
        pair = tokenized[row]
        for column, measure in SCORE_COLUMNS.items():
            columns[column][row] = measures[measure][position]
        for column, ids in zip(LENGTH_COLUMNS, (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)):
            columns[column][row] = len(ids)
    clashes = sorted(set(ADDED_COLUMNS) & set(dataset.column_names))
    if clashes:
        dataset = dataset.remove_columns(clashes)  # a re-scored Dataset: replace the old scores
    for column, values in columns.items():
        dataset = dataset.add_column(column, values)
    return dataset


# ------------------------------------------------------------------------------------------------------- filters

def _scores(scored, column: str) -> list[float]:
    if column not in SCORE_COLUMNS or column not in scored.column_names:
        raise ValueError(f"score column {column!r}: expected one of {list(SCORE_COLUMNS)} in a Dataset returned by "
                         f"score_pairs (its columns: {scored.column_names})")
    return [math.nan if value is None else float(value) for value in scored[column]]


def lowest_k(scored, k: int, column: str = "ches"):
    """The k rows with the lowest `column` score (NaN never kept; `ches.ches.select_lowest_k`), in input order."""
    return scored.select(select_lowest_k(_scores(scored, column), k))


def quantile_window(scored, k: int, quantile: float, column: str = "ches"):
    """k rows of consecutive `column` rank centred on `quantile` (`ches.ches.select_quantile_window`)."""
    return scored.select(select_quantile_window(_scores(scored, column), k, quantile))


def within_threshold(scored, column: str = "ches", *, min_value: float | None = None,
                     max_value: float | None = None):
    """Rows with min_value <= score <= max_value (a None bound is open; NaN rows are dropped), in input order.

    Example: scores [3, NaN, -1, 5], max_value 3 -> rows 0 and 2.
    """
    if min_value is None and max_value is None:
        raise ValueError("within_threshold: give min_value, max_value or both")
    low = -math.inf if min_value is None else min_value
    high = math.inf if max_value is None else max_value
    return scored.select([i for i, s in enumerate(_scores(scored, column)) if low <= s <= high])


def export_for_trl(scored, path: str | Path, *, keep_scores: bool = False) -> Path:
    """Write rows as a TRL-ready preference file (.jsonl or .parquet): the original columns in their original
    format (`DPOTrainer(train_dataset=load_dataset("json", data_files=path)["train"])`), plus the score columns when
    `keep_scores`. Returns `path`."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"export_for_trl: {path} must end in .jsonl or .parquet")
    if not keep_scores:
        scored = scored.remove_columns([c for c in ADDED_COLUMNS if c in scored.column_names])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        scored.to_json(str(path), lines=True, force_ascii=False)
    else:
        scored.to_parquet(str(path))
    return path

