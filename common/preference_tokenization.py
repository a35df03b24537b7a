"""Prompt formatting and pair tokenization, shared by the CHES script and the dataset-level trainer.

    options = TokenizationOptions(prompt_format="paper", truncation="paper", eos_after_truncation=True)
    prepare_tokenizer_for_prompt_format(tokenizer, model, options.prompt_format)   # paper markers, if needed
    pair = tokenize_pair(tokenizer, example, 512, options)   # TokenizedPair, or a str skip reason

Prompt formats (`prompt_format`):
    plain  tokenizer with a chat template: one user turn plus the generation prompt; otherwise
           `prompt + "\\n"`. The library default (trainer, persona, SORRY-Bench generation).
    paper  the reference implementation's similarity script: the chat template when the tokenizer has one,
           otherwise `<|prompter|>{prompt}<|assistant|>` with those two added as special tokens (and
           `<|padding|>` / `<|endoftext|>` when the tokenizer has no pad / EOS token), the embeddings resized
           (`prepare_tokenizer_for_prompt_format`).
hh_rlhf prompts (`metadata["prompt_is_dialogue"]`) are used as plain text in both formats.

Truncation (`truncation`, L = max_input_length, None = none):
    paper          the reference's: prompt + response is cut on the right to L tokens; a prompt of more than L
                   tokens, or a response left with no tokens, drops the pair (the reference's similarity script
                   drops pairs whose response becomes empty; its trainer drops prompts longer than L).
    keep_response  ours: when P + R > L (R the longest response) the prompt keeps its last
                   min(P, max(L - R, L // 2, 1)) tokens, each response its first L - (kept prompt) tokens, so no
                   pair is dropped for length; whitespace-only responses are skipped.
EOS: `eos_after_truncation=False` (training) appends the EOS to each response before truncation, so it counts
in L and is cut with the response, as the reference trainer's `text + eos_token`. `True` (the CHES script)
truncates the response text and then appends the EOS: it is the target predicted by the hidden state at the
last response token, which the reference sums over (its `hidden_states[-1][query_len - 1:]`).
Identical responses are kept (the reference's rule; CHES is then 0) unless `skip_identical`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.preference_data import PLAIN_PROMPT_SEPARATOR, PROMPT_IS_DIALOGUE_KEY, PreferenceExample, TokenizedPair

PAPER_PROMPTER_TOKEN = "<|prompter|>"
PAPER_ASSISTANT_TOKEN = "<|assistant|>"
PAPER_PADDING_TOKEN = "<|padding|>"
PAPER_EOS_TOKEN = "<|endoftext|>"
PROMPT_FORMATS = ("plain", "paper")
TRUNCATIONS = ("paper", "keep_response")


@dataclass(frozen=True)
class TokenizationOptions:
    """How `tokenize_pair` formats, truncates and filters (module docstring).

    Attributes:
        prompt_format: `plain` or `paper`.
        truncation: `paper` (right-cut, drop) or `keep_response` (left-cut prompt, keep every pair).
        skip_identical: Skip pairs whose responses are identical (text or token ids, before or after
            truncation); the reference keeps them.
        eos_after_truncation: Append the EOS after truncating (CHES script) instead of before (training).
    """

    prompt_format: str = "plain"
    truncation: str = "paper"
    skip_identical: bool = False
    eos_after_truncation: bool = False

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format: expected one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation: expected one of {TRUNCATIONS}, got {self.truncation!r}")


# What compute_preference_similarity_per_example.py uses by default (the reference script's rules); code that must
# reproduce its scores (e.g. a data-set-level scorer) tokenizes with these after
# `prepare_tokenizer_for_prompt_format(tokenizer, model, "paper")`.
SIMILARITY_SCRIPT_OPTIONS = TokenizationOptions(prompt_format="paper", truncation="paper", skip_identical=False,
                                                eos_after_truncation=True)


def _uses_paper_markers(tokenizer, prompt_format: str) -> bool:
    return prompt_format == "paper" and not getattr(tokenizer, "chat_template", None)


def prepare_tokenizer_for_prompt_format(tokenizer, model, prompt_format: str) -> bool:
    """Add what the `paper` format needs to a tokenizer without a chat template, as the reference does: EOS
    `<|endoftext|>` and pad `<|padding|>` when missing, the special tokens `<|prompter|>` and `<|assistant|>`,
    then `model.resize_token_embeddings(len(tokenizer))` (new rows drawn by transformers close to the mean of the
    old ones, under a fixed seed so reruns agree; rows already present in a padded embedding matrix are kept).
    Returns whether anything was added."""
    if not _uses_paper_markers(tokenizer, prompt_format):
        return False
    added = {}
    if tokenizer.eos_token is None:
        added["eos_token"] = PAPER_EOS_TOKEN
    if tokenizer.pad_token is None:
        added["pad_token"] = PAPER_PADDING_TOKEN
    added["additional_special_tokens"] = [PAPER_PROMPTER_TOKEN, PAPER_ASSISTANT_TOKEN]
    tokenizer.add_special_tokens(added)
    with torch.random.fork_rng(devices=[]):  # transformers draws the new rows around the old mean: make it repeatable
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer))
    return True


def format_prompt(tokenizer, prompt: str, *, is_dialogue: bool = False, prompt_format: str = "plain") -> str:
    """The prompt text exactly as the model sees it (before tokenization).

    - `is_dialogue` (hh_rlhf prompts): the text unchanged; it already ends with "\\n\\nAssistant:".
    - tokenizer with a chat template: one user turn plus the generation prompt
      (`apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)`).
    - otherwise: `prompt + "\\n"` (plain) or `<|prompter|>prompt<|assistant|>` (paper).
    """
    if is_dialogue:
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    if prompt_format == "paper":
        return f"{PAPER_PROMPTER_TOKEN}{prompt}{PAPER_ASSISTANT_TOKEN}"
    return prompt + PLAIN_PROMPT_SEPARATOR


def _encode_prompt(tokenizer, example: PreferenceExample, prompt_format: str) -> list[int]:
    """Prompt ids. Special tokens (e.g. BOS) are added by the tokenizer only for text without a chat template
    (as the reference's `add_special_tokens=not tokenizer.chat_template`)."""
    is_dialogue = bool(example.metadata.get(PROMPT_IS_DIALOGUE_KEY, False))
    if not is_dialogue and _uses_paper_markers(tokenizer, prompt_format):
        if len(tokenizer(PAPER_PROMPTER_TOKEN, add_special_tokens=False)["input_ids"]) != 1:
            raise ValueError(f"prompt_format 'paper': the tokenizer has no {PAPER_PROMPTER_TOKEN} special token; "
                             "call prepare_tokenizer_for_prompt_format(tokenizer, model, 'paper') first")
    text = format_prompt(tokenizer, example.prompt, is_dialogue=is_dialogue, prompt_format=prompt_format)
    uses_template = not is_dialogue and bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not uses_template)["input_ids"]


def _keep_response_truncation(prompt_ids: list[int], responses: list[list[int]], max_input_length: int
                              ) -> tuple[list[int], list[list[int]]]:
    """Ours: cut the prompt from the left to min(P, max(L - R, L // 2, 1)), the responses to the rest."""
    longest = max(len(r) for r in responses)
    if len(prompt_ids) + longest <= max_input_length:
        return prompt_ids, responses
    keep_prompt = min(len(prompt_ids), max(max_input_length - longest, max_input_length // 2, 1))
    budget = max_input_length - keep_prompt
    return prompt_ids[len(prompt_ids) - keep_prompt:], [r[:budget] for r in responses]


def tokenize_pair(tokenizer, example: PreferenceExample, max_input_length: int | None,
                  options: TokenizationOptions = TokenizationOptions()) -> TokenizedPair | str:
    """Tokenize prompt and responses separately (no BPE merge across the boundary), then truncate and filter
    by `options` (module docstring).

    Returns:
        The TokenizedPair, or a string naming why the pair is skipped (empty prompt, prompt longer than L,
        empty response, and with `skip_identical` identical responses).
    """
    if max_input_length is not None and max_input_length < 2:
        raise ValueError(f"max_input_length must be >= 2 (one prompt + one response token) or None, "
                         f"got {max_input_length}")
    keep_response = options.truncation == "keep_response"
    if keep_response:
        for name, text in (("chosen", example.chosen), ("rejected", example.rejected)):
            if not text.strip():
                return f"empty {name} response"
    if options.skip_identical and example.chosen == example.rejected:
        return "chosen and rejected responses are identical"
    prompt_ids = _encode_prompt(tokenizer, example, options.prompt_format)
    if not prompt_ids:
        return "empty prompt (no tokens)"
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if options.eos_after_truncation and not eos:
        raise ValueError("the tokenizer has no EOS token (needed as the last response target); set "
                         "tokenizer.eos_token or use prompt_format 'paper', which adds <|endoftext|>")
    tail = [] if options.eos_after_truncation else eos
    responses = [tokenizer(text, add_special_tokens=False)["input_ids"] + tail
                 for text in (example.chosen, example.rejected)]
    for name, ids in zip(("chosen", "rejected"), responses):
        if not ids:
            return f"empty {name} response"
    where = "" if max_input_length is None else f" after truncation to {max_input_length} tokens"
    if max_input_length is not None and keep_response:
        prompt_ids, responses = _keep_response_truncation(prompt_ids, responses, max_input_length)
    elif max_input_length is not None:
        if len(prompt_ids) > max_input_length:
            return f"prompt longer than max_input_length {max_input_length}"
        responses = [r[:max_input_length - len(prompt_ids)] for r in responses]
    for name, ids in zip(("chosen", "rejected"), responses):
        if not ids:
            return f"empty {name} response{where}"
    if options.skip_identical and responses[0] == responses[1]:
        return f"chosen and rejected token ids are identical{where}"
    chosen_ids, rejected_ids = (r + eos for r in responses) if options.eos_after_truncation else responses
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, example.source_index)
