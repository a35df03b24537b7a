"""Persona data: load the Anthropic persona jsonl, pick training prompts, map output tokens to ids, build a batch.

    examples = load_persona_examples("data_files/persona/ends-justify-means.jsonl")
    selected = select_examples(examples, num_train_samples=1, answer_matching_behavior_to_use="Yes", seed=9773)
    batch = build_persona_batch(tokenizer, selected, ["Yes"], ["No"], seed=9773)

The dataset is found by the data-location rule (`common/data_locations.py`): the path as given, then
`data_files/<name>`, then `$LD_DATA_DIR/<name>`, then the file's public source
(`data_files/persona/ends-justify-means.jsonl` is `persona/ends-justify-means.jsonl` of the Hub dataset
`Anthropic/model-written-evals`). A file in any Hub dataset repo can also be written `<org>/<repo>/<path in repo>`,
e.g. `Anthropic/model-written-evals/persona/ends-justify-means.jsonl` (downloaded with `huggingface_hub`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from common.data_locations import locate_data_file
from common.preference_data import format_prompt
from common.sequence_logprobs import pad_token_id_of

DEFAULT_PERSONA_DATASET = "data_files/persona/ends-justify-means.jsonl"
ANSWERS = ("Yes", "No")


class OutputTokenError(ValueError):
    """An output token of the config is not exactly one vocabulary token."""


@dataclass
class PersonaExample:
    """One persona statement.

    Attributes:
        index: 0-based row in the dataset file.
        question: The prompt text ("Is the following statement something you would say?\\n...").
        answer_matching_behavior: "Yes" or "No" (leading space of the file stripped).
    """

    index: int
    question: str
    answer_matching_behavior: str


@dataclass
class PersonaBatch:
    """Tokenized training prompts and their output tokens (all tensors on the CPU).

    Attributes:
        input_ids: (N, L) prompt ids, right-padded with the pad (or EOS) id.
        attention_mask: (N, L) 1 on prompt tokens, 0 on padding.
        last_index: (N,) position of each prompt's last token (where the next-token distribution is read).
        preferred_ids / dispreferred_ids: (N,) y+ and y- token ids.
        example_ids: Dataset rows of the N prompts.
        prompts: The formatted prompt texts.
    """

    input_ids: Tensor
    attention_mask: Tensor
    last_index: Tensor
    preferred_ids: Tensor
    dispreferred_ids: Tensor
    example_ids: list[int]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.example_ids)

    def subset(self, rows: Tensor) -> "PersonaBatch":
        """The examples at positions `rows` (a (M,) int64 tensor), padding trimmed to their longest prompt."""
        width = int(self.last_index[rows].max()) + 1
        return PersonaBatch(self.input_ids[rows, :width], self.attention_mask[rows, :width], self.last_index[rows],
                            self.preferred_ids[rows], self.dispreferred_ids[rows],
                            [self.example_ids[i] for i in rows.tolist()], [self.prompts[i] for i in rows.tolist()])


def resolve_dataset_file(dataset: str) -> Path:
    """The persona file `dataset` names, by the data-location rule with Hub file names (`<org>/<repo>/<path>`)
    allowed. Raises `common.data_locations.DataNotFoundError` listing the places tried and how to get the file."""
    return locate_data_file(dataset, hub_file_syntax=True)


def load_persona_examples(dataset: str) -> list[PersonaExample]:
    """Read every row of a persona jsonl (`question`, `answer_matching_behavior` " Yes"/" No")."""
    path = resolve_dataset_file(dataset)
    examples = []
    with path.open(encoding="utf-8") as f:
        for row_number, line in enumerate(line for line in f if line.strip()):
            row = json.loads(line)
            where = f"{path}, row {row_number}"
            if "question" not in row or "answer_matching_behavior" not in row:
                raise ValueError(f"{where}: expected columns `question` and `answer_matching_behavior`, "
                                 f"got {sorted(row)}")
            answer = str(row["answer_matching_behavior"]).strip()
            if answer not in ANSWERS:
                raise ValueError(f"{where}: answer_matching_behavior must be ' Yes' or ' No', got {answer!r}")
            examples.append(PersonaExample(row_number, row["question"], answer))
    if not examples:
        raise ValueError(f"dataset {path} has no rows")
    return examples


def select_examples(examples: list[PersonaExample], num_train_samples: int | None,
                    answer_matching_behavior_to_use: str, seed: int) -> list[PersonaExample]:
    """The reference's prompt selection (its PersonaSingleOutputTokenDataModule.setup).

    1. Keep the rows with `answer_matching_behavior.strip().lower() == answer_matching_behavior_to_use.lower()`
       ("" keeps every row); n rows remain.
    2. perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) when seed > 0, else
       torch.randperm(n) on the global torch generator (seeded by the runner with the run's random_seed).
    3. With 0 < num_train_samples < n, return the rows perm[:num_train_samples] in that (permutation) order;
       num_train_samples None (all) or n returns all n rows in file order.
    Example: 7 rows, seed 11 -> perm [4, 0, 2, 6, 3, 1, 5], so num_train_samples 2 picks rows 4 and 0.
    On ends-justify-means.jsonl "No" rows, seeds 9773, 5290, 8767 pick file rows 793, 149, 639.

    Raises:
        ValueError: num_train_samples is not None and outside [1, n] (the reference silently used all rows).
    """
    wanted = answer_matching_behavior_to_use.strip().lower()
    pool = [e for e in examples if not wanted or e.answer_matching_behavior.strip().lower() == wanted]
    if num_train_samples is not None and not 1 <= num_train_samples <= len(pool):
        raise ValueError(f"num_train_samples must be in [1, {len(pool)}] (rows with answer "
                         f"{answer_matching_behavior_to_use or 'Yes or No'}) or null for all, got {num_train_samples}")
    if num_train_samples is None or num_train_samples == len(pool):
        return pool
    generator = torch.Generator().manual_seed(seed) if seed > 0 else None
    perm = torch.randperm(len(pool), generator=generator)
    return [pool[i] for i in perm[:num_train_samples].tolist()]


def _close_vocabulary_entries(tokenizer, token: str, limit: int = 8) -> list[str]:
    """Single-token spellings near `token`: with/without a leading space, lower/capitalised, and the raw vocabulary
    entries that contain it (e.g. 'ĠYes'). Each is shown as repr(text) -> raw entry."""
    stripped = token.strip()
    variants = dict.fromkeys([stripped, " " + stripped, stripped.lower(), " " + stripped.lower(),
                              stripped.capitalize(), " " + stripped.capitalize()])
    found = []
    for text in variants:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            found.append(f"{text!r} -> {tokenizer.convert_ids_to_tokens(ids[0])!r}")
    if stripped and len(found) < limit:
        raw = [entry for entry in tokenizer.get_vocab() if stripped in entry and len(entry) <= len(stripped) + 2]
        found.extend(f"raw entry {entry!r}" for entry in sorted(raw)[: limit - len(found)])
    return found


def output_token_id(tokenizer, token: str, field: str) -> int:
    """The id of `token` (text that must encode to exactly one vocabulary token, without special tokens).

    Raises:
        OutputTokenError: naming the field and token, its tokenization, and close single-token entries.
    """
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    close = _close_vocabulary_entries(tokenizer, token)
    raise OutputTokenError(f"{field}: output token {token!r} is not one vocabulary token (it encodes to "
                           f"{len(ids)} tokens {pieces}); close single-token entries: "
                           f"{', '.join(close) if close else 'none found'}")


@functools.lru_cache(maxsize=8)
def _offline_tokenizer(model: str):
    """`model`'s tokenizer if it loads without the network (built-in or local directory), else None (Hub id).
    A tokenizer that should load offline but does not (a corrupt tokenizer.json) raises ModelLoadError."""
    from common import models  # imported lazily: loads transformers/peft

    return models.load_tokenizer(model, offline_only=True)


def output_token_problems(model: str, token_lists: dict[str, list[str]]) -> list[str]:
    """Plan-time check that every token of `token_lists` (field name -> tokens) is one vocabulary token of `model`.

    Runs when the tokenizer loads offline (built-in models, local directories); Hub models are checked when the
    run starts. Returns one problem string (the OutputTokenError message) per bad token, or one problem naming
    the file when the tokenizer that should load offline is broken (the check is never skipped silently).
    """
    from common.models import ModelLoadError

    try:
        tokenizer = _offline_tokenizer(model)
    except ModelLoadError as error:
        return [f"output tokens cannot be checked: {error}"]
    if tokenizer is None:
        return []
    problems = []
    for field, tokens in token_lists.items():
        for token in tokens:
            try:
                output_token_id(tokenizer, token, field)
            except OutputTokenError as error:
                problems.append(str(error))
    return problems


def build_persona_batch(tokenizer, examples: list[PersonaExample], output_tokens_matching_yes: list[str],
                        output_tokens_matching_no: list[str], seed: int) -> PersonaBatch:
    """Format and tokenize the prompts and draw each example's (y+, y-) pair.

    The preferred token of a prompt whose answer_matching_behavior is Yes is drawn uniformly from
    `output_tokens_matching_yes` and the dispreferred from `output_tokens_matching_no` (swapped for No), by the
    reference's rule: `torch.randint(0, len(list), (1,))` per prompt, first every prompt's y+ then every prompt's
    y-, on a generator seeded with `seed` when seed > 0 (else the global torch generator). Prompt text: `format_prompt` (chat template with one user turn and the
    generation prompt if the tokenizer has one, else question + "\\n"); special tokens are added by the tokenizer
    only for plain text.
    """
    yes_ids = [output_token_id(tokenizer, t, "output_tokens_matching_yes") for t in output_tokens_matching_yes]
    no_ids = [output_token_id(tokenizer, t, "output_tokens_matching_no") for t in output_tokens_matching_no]
    generator = torch.Generator().manual_seed(seed) if seed > 0 else None
    uses_template = bool(getattr(tokenizer, "chat_template", None))
    prompts, encoded, preferred, dispreferred = [], [], [], []
    for example in examples:
        text = format_prompt(tokenizer, example.question)
        ids = tokenizer(text, add_special_tokens=not uses_template)["input_ids"]
        if not ids:
            raise ValueError(f"prompt of dataset row {example.index} has no tokens")
        prompts.append(text)
        encoded.append(ids)
    lists = [(yes_ids, no_ids) if e.answer_matching_behavior == "Yes" else (no_ids, yes_ids) for e in examples]
    preferred = [matching[int(torch.randint(len(matching), (1,), generator=generator))] for matching, _ in lists]
    dispreferred = [other[int(torch.randint(len(other), (1,), generator=generator))] for _, other in lists]
    pad_id = pad_token_id_of(tokenizer)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return PersonaBatch(input_ids, attention_mask, torch.tensor([len(ids) - 1 for ids in encoded]),
                        torch.tensor(preferred), torch.tensor(dispreferred), [e.index for e in examples], prompts)
