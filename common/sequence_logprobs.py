"""Summed response log-probs log pi(y|x) of preference pairs, computed with as little work as possible.

For a prompt x (P tokens) and a response y (R tokens) the model input is the concatenation x + y, and

    log pi(y|x) = sum_{k=1..R} log softmax(W h_{P+k-1})[y_k]          (nats)

where h_t is the last hidden state at 1-based position t (the last prompt token, position P, predicts y_1)
and W the LM head. Only these R hidden states go through the LM head (`logits_to_keep`), so the
(sequence length x vocabulary) logits of the whole input are never materialised, and the final input
token y_R is not fed at all (nothing is predicted from it).

Two ways to run a list of pairs, same numbers (tests check both against a naive full-logits gather):
  - `pair_logps` (padding-free, the default on CPU): one pair at a time, no padding. With
    `share_prompt=True` the prompt prefix x_{1..P-1} is run once and its key/value cache reused by both
    responses (the continuation x_P + y_{1..R-1} is run once per response); gradients flow through the
    cache into the shared prefix, so the result is the same function of the parameters.
  - `batch_logps_padded` (for GPUs): chosen and rejected sequences of several pairs right-padded into one
    batch; the LM head still sees only response positions (a boolean `logits_to_keep` mask).

Models whose `forward` has no `logits_to_keep` argument fall back to full logits (correct, just slower).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from common.preference_data import TokenizedPair


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model: strips DDP/FSDP-style `.module` wrappers and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model's forward accepts `logits_to_keep` (transformers >= 4.45 causal LMs)."""
    return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _at_least_fp32(tensor: Tensor) -> Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def summed_token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """sum_k log softmax(logits[k])[targets[k]] in float32 (float64 for a float64 model), i.e. minus the summed
    cross-entropy.

    Args:
        logits: (R, V) logits of the R positions that predict the targets (any float dtype).
        targets: (R,) token ids.

    Returns:
        0-dim tensor (nats).
    """
    return -F.cross_entropy(_at_least_fp32(logits), targets, reduction="sum")


def _response_logits(model: torch.nn.Module, input_ids: Tensor, num_kept: int, keep_logits: bool,
                     past_key_values=None) -> Tensor:
    """(num_kept, V) logits of the last `num_kept` positions of a (1, L) input (optionally after a cache)."""
    kwargs = {"input_ids": input_ids, "use_cache": past_key_values is not None}
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    if keep_logits:
        kwargs["logits_to_keep"] = num_kept
    logits = model(**kwargs).logits[0]
    return logits[-num_kept:]


def _copy_cache(cache: DynamicCache, config) -> DynamicCache:
    """A new DynamicCache holding the same key/value tensors (the model extends the copy, not the original)."""
    layers = [(keys, values) for keys, values, *_ in cache]
    return DynamicCache(ddp_cache_data=layers, config=config)


def _can_share_prompt(model: torch.nn.Module, cache) -> bool:
    """Prefix sharing needs a plain DynamicCache whose layers hold full (non-sliding) key/value tensors."""
    if not isinstance(cache, DynamicCache):
        return False
    return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def pair_logps(model: torch.nn.Module, pair: TokenizedPair, *, share_prompt: bool = True,
               keep_logits: bool | None = None) -> tuple[Tensor, Tensor]:
    """log pi(y+|x) and log pi(y-|x) of one pair, unpadded (gradients flow if grad mode is on).

    Args:
        model: Causal LM (possibly wrapped by DDP/PEFT); its device is used for the inputs.
        pair: Token ids (prompt >= 1 token, responses >= 1 token each).
        share_prompt: Run the prompt prefix once and reuse its key/value cache for both responses.
            Falls back to two full forwards when the prompt has one token or the model's cache is not a
            plain DynamicCache (e.g. sliding-window layers).
        keep_logits: Pass `logits_to_keep`; None = detect from the model's forward signature.

    Returns:
        (chosen_logp, rejected_logp): 0-dim float32 tensors (float64 for a float64 model), nats.
    """
    if keep_logits is None:
        keep_logits = supports_logits_to_keep(model)
    device = _model_device(model)
    prompt = pair.prompt_ids
    responses = (pair.chosen_ids, pair.rejected_ids)
    results: list[Tensor] = []
    prefix_cache = None
    if share_prompt and len(prompt) >= 2:
        prefix = torch.tensor([prompt[:-1]], device=device)
        output = model(input_ids=prefix, use_cache=True, **({"logits_to_keep": 1} if keep_logits else {}))
        prefix_cache = output.past_key_values
        if not _can_share_prompt(model, prefix_cache):
            prefix_cache = None
    for response in responses:
        targets = torch.tensor(response, device=device)
        if prefix_cache is not None:
            continuation = torch.tensor([prompt[-1:] + response[:-1]], device=device)
            cache = _copy_cache(prefix_cache, unwrap_model(model).config)
            logits = _response_logits(model, continuation, len(response), keep_logits, past_key_values=cache)
        else:
            full = torch.tensor([prompt + response[:-1]], device=device)
            logits = _response_logits(model, full, len(response), keep_logits)
        results.append(summed_token_logps(logits, targets))
    return results[0], results[1]


def batch_logps_padded(model: torch.nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int, *,
                       keep_logits: bool | None = None) -> tuple[Tensor, Tensor]:
    """log pi(y+|x) and log pi(y-|x) of several pairs in one right-padded forward.

    Rows 0..B-1 hold prompt + chosen[:-1], rows B..2B-1 prompt + rejected[:-1], padded on the right to the
    longest row with `pad_token_id` (attention mask 0 there, so real positions are unaffected). Only the
    response-predicting positions reach the LM head (boolean `logits_to_keep` of shape (2B, L)).

    Returns:
        (chosen_logps, rejected_logps): (B,) float32 tensors (float64 for a float64 model), nats.
    """
    if keep_logits is None:
        keep_logits = supports_logits_to_keep(model)
    device = _model_device(model)
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    length = max(len(prompt) + len(response) - 1 for prompt, response in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    keep = torch.zeros((len(rows), length), dtype=torch.bool)
    targets, row_of_target = [], []
    for row, (prompt, response) in enumerate(rows):
        tokens = prompt + response[:-1]
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        keep[row, len(prompt) - 1: len(tokens)] = True  # positions P-1 .. P+R-2 (0-based) predict y_1..y_R
        targets.extend(response)
        row_of_target.extend([row] * len(response))
    input_ids, attention_mask, keep = input_ids.to(device), attention_mask.to(device), keep.to(device)
    targets_t = torch.tensor(targets, device=device)
    rows_t = torch.tensor(row_of_target, device=device)
    if keep_logits:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])  # (num_targets, V) in row-major order of `keep`
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[keep]
    token_logps = -F.cross_entropy(_at_least_fp32(logits), targets_t, reduction="none")
    sums = torch.zeros(len(rows), dtype=token_logps.dtype, device=device).index_add(0, rows_t, token_logps)
    return sums[: len(pairs)], sums[len(pairs):]
