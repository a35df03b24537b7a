"""Probe pairs for the displacement callback, tokenised exactly as the trainer tokenises its training data.

    pairs = probe_pairs(trainer, probe)        # list[TokenizedPair], the ids the trainer's model would see

`probe` is one of:
  * a list / range of row indices into `trainer.train_dataset` (already tokenised by the trainer);
  * a `datasets.Dataset` that is already tokenised (columns `prompt_ids`, `chosen_ids`, `rejected_ids`);
  * a `datasets.Dataset` of raw preference rows in any format the trainer accepts (TRL standard or conversational,
    explicit or implicit prompt): it goes through the trainer's own `_prepare_dataset` (TRL preference trainers:
    prompt extraction, EOS, chat template, tokenisation, the `max_length` filter).
Every row then goes through the trainer's own `data_collator` (TRL's `DataCollatorForPreference`: the per-sequence
`max_length` truncation), and the prompt and responses are read back from its `completion_mask`, so the probe
log-probs are those of the exact token ids the trainer trains on. A collator that returns no `completion_mask`
(another preference collator) leaves the ids as they are; a plain `transformers.Trainer` (no `_prepare_dataset`) takes
a tokenised probe and its ids as given.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from common.preference_data import TokenizedPair

TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
log = logging.getLogger(__name__)


def is_tokenized(dataset: Any) -> bool:
    """Whether `dataset` has the tokenised preference columns `prompt_ids`, `chosen_ids`, `rejected_ids`."""
    return all(column in dataset.column_names for column in TOKENIZED_COLUMNS)


def _tokenized_rows(trainer: Any, probe: Any) -> tuple[Any, list[int]]:
    """(tokenised rows, their ids for the saved tensors) of `probe` (see the module docstring)."""
    from datasets import Dataset

    if isinstance(probe, (list, tuple, range)):
        indices = [int(i) for i in probe]
        dataset = trainer.train_dataset
        if not indices or min(indices) < 0 or max(indices) >= len(dataset):
            raise ValueError(f"probe: row indices must be a non-empty list in [0, {len(dataset)}) of the trainer's "
                             f"train_dataset, got {len(indices)} indices ranging {min(indices, default=None)}.."
                             f"{max(indices, default=None)}")
        if not is_tokenized(dataset):
            raise ValueError(f"probe: trainer.train_dataset has columns {dataset.column_names}, not the tokenised "
                             f"{list(TOKENIZED_COLUMNS)}; pass the probe as a datasets.Dataset instead")
        return dataset.select(indices), indices
    if not isinstance(probe, Dataset):
        raise TypeError(f"probe: expected a datasets.Dataset or a list of train_dataset row indices, got "
                        f"{type(probe).__name__}")
    if len(probe) == 0:
        raise ValueError("probe: the probe Dataset is empty; pass at least one preference pair")
    if is_tokenized(probe):
        return probe, list(range(len(probe)))
    prepare = getattr(trainer, "_prepare_dataset", None)
    if prepare is None:
        raise ValueError(f"probe: {type(trainer).__name__} does not tokenise preference data; pass a Dataset with "
                         f"columns {list(TOKENIZED_COLUMNS)} (token ids as your model sees them)")
    prepared = prepare(probe, trainer.processing_class, trainer.args, "probe")
    if len(prepared) == 0:
        raise ValueError(f"probe: all {len(probe)} probe rows were dropped by the trainer's preprocessing (prompt "
                         f"longer than max_length={getattr(trainer.args, 'max_length', None)})")
    if len(prepared) < len(probe):
        log.warning("probe: the trainer's preprocessing dropped %d of %d probe rows (prompt of >= max_length=%s "
                    "tokens); %d pairs are tracked", len(probe) - len(prepared), len(probe),
                    getattr(trainer.args, "max_length", None), len(prepared))
    return prepared, list(range(len(prepared)))


def _split_collated_row(batch: dict, row: int) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of row `row` of a collated batch (padding removed via attention_mask)."""
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row, :length].tolist()
    mask = batch["completion_mask"][row, :length].tolist()
    first = mask.index(1) if 1 in mask else length
    return ids[:first], ids[first:]


def pair_as_trained(collator: Any, prompt_ids: Sequence[int], chosen_ids: Sequence[int],
                    rejected_ids: Sequence[int], source_index: int) -> TokenizedPair:
    """The pair after the trainer's collator (its truncation), as a TokenizedPair with one shared prompt.

    Raises:
        ValueError: the truncated prompt or a response is empty, or truncation left the chosen and rejected
            sequences with different prompts (`truncation_mode="keep_end"` with responses of different lengths).
    """
    prompt, chosen, rejected = list(prompt_ids), list(chosen_ids), list(rejected_ids)
    if collator is not None:
        batch = collator([{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}])
        if "completion_mask" in batch:
            (prompt, chosen), (rejected_prompt, rejected) = _split_collated_row(batch, 0), _split_collated_row(batch, 1)
            if rejected_prompt != prompt:
                raise ValueError(f"probe row {source_index}: after the collator's truncation the chosen and rejected "
                                 f"sequences keep different prompts ({len(prompt)} vs {len(rejected_prompt)} tokens); "
                                 f"use truncation_mode='keep_start' or a larger max_length")
    if not prompt or not chosen or not rejected:
        raise ValueError(f"probe row {source_index}: empty prompt or response after tokenisation/truncation "
                         f"({len(prompt)} prompt, {len(chosen)} chosen, {len(rejected)} rejected tokens); "
                         f"drop the row or raise max_length")
    return TokenizedPair(prompt, chosen, rejected, source_index)


def probe_pairs(trainer: Any, probe: Any) -> list[TokenizedPair]:
    """The probe as TokenizedPairs with the token ids the trainer trains on (see the module docstring).

    `source_index` is the row in `trainer.train_dataset` for an index probe, else the row of the (prepared) probe.
    """
    rows, ids = _tokenized_rows(trainer, probe)
    # Only TRL preference trainers collate {prompt_ids, chosen_ids, rejected_ids} rows; a plain Trainer's collator
    # expects its own inputs, so its probe ids are used as given.
    collator = trainer.data_collator if hasattr(trainer, "_prepare_dataset") else None
    return [pair_as_trained(collator, row["prompt_ids"], row["chosen_ids"], row["rejected_ids"], source)
            for row, source in zip(rows, ids)]
