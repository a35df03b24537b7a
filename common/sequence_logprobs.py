"""Summed response log-probs log pi(y|x) of preference pairs, computed with as little work as possible.

For a prompt x (P tokens) and a response y (R tokens) the model input is the concatenation x + y, and

    log pi(y|x) = sum_{k=1..R} log softmax(W h_{P+k-1})[y_k]          (nats)

where h_t is the last hidden state at 1-based position t (the last prompt token, position P, predicts y_1)
and W the LM head. Only these R hidden states go through the LM head (`logits_to_keep`), so the
(sequence length x vocabulary) logits of the whole input are never materialised, and the final input
token y_R is not fed at all (nothing is predicted from it).

Two ways to run a list of pairs, same numbers (tests check both against a naive full-logits gather):
  - `pair_logps` (padding-free, the default on CPU): one pair at a time, no padding. With
    `share_prompt=True` the prompt and both responses go through ONE forward: x_{1..P-1} once, then
    x_P + y+_{1..R+-1} and x_P + y-_{1..R--1}, with position ids and a block mask that make each response
    see only the prompt and itself. Same function of the parameters as two separate forwards, but the
    prompt's work is done once and each weight's gradient is formed by one matmul per pair. Where the model
    allows, that forward runs its attention as two causal SDPA calls instead of the dense mask
    (`common.pair_attention`) and, in a training step (`direct_weight_grads=True`), writes the embedding and
    LM-head weight gradients straight into `.grad` (`common.direct_grads`); same numbers up to fp32 round-off.
  - `batch_logps_padded` (for GPUs): chosen and rejected sequences of several pairs right-padded into one
    batch; the LM head still sees only response positions (a boolean `logits_to_keep` mask).

Models whose `forward` has no `logits_to_keep` argument fall back to full logits (correct, just slower).
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from common.direct_grads import can_embed_into_grad, embed_into_grad, linears_into_grad
from common.pair_attention import can_split_attention, split_attention_for
from common.segment_logps import segment_summed_logps
from common.preference_data import TokenizedPair


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model: strips DDP/FSDP-style `.module` wrappers and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def transformer_body(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head (`model.model` for Llama, `model.transformer` for GPT-2) of a causal
    LM, wrapped (DDP, PEFT) or not; an already-bare base model is returned unchanged."""
    inner = unwrap_model(model)
    return getattr(inner, "base_model", inner)


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (GPT-2 style tokenizers have no pad token; `common.models` sets
    pad = EOS when loading, so the fallback serves tokenizers loaded elsewhere)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first")
    return pad_id


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


def _response_logits(model: torch.nn.Module, input_ids: Tensor, num_kept: int, keep_logits: bool) -> Tensor:
    """(num_kept, V) logits of the last `num_kept` positions of a (1, L) input."""
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if keep_logits:
        kwargs["logits_to_keep"] = num_kept
    logits = model(**kwargs).logits[0]
    return logits[-num_kept:]


PROMPT, CHOSEN, REJECTED = 1, 2, 3  # segment labels of a packed row; 0 = padding
SUPPORTED_ATTENTION = ("sdpa", "eager")  # implementations that accept a custom 4D additive mask


def packed_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask (B, 1, L, L) for packed rows: 0 where query q may attend key k, dtype-min elsewhere.

    q attends k iff k is not after q (column order), k is a real token, and k is in the prompt or in q's own
    segment: so each response sees the prompt and its own earlier tokens, never the other response. Padding
    positions attend only themselves (never fully masked rows, so no NaN from an empty softmax).
    """
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)  # (B, L, 1), (B, 1, L)
    allowed = causal & (query != 0) & (key != 0) & ((key == PROMPT) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def pack_pairs(pairs: Sequence[TokenizedPair], padding_side: str = "right"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay each pair out as one row [prompt | chosen | rejected], padded on `padding_side`.

    Returns:
        input_ids (B, L) long (pad id 0), segments (B, L) long (0 pad, 1 prompt, 2 chosen, 3 rejected),
        position_ids (B, L) long: prompt 0..P-1, chosen P..P+|y+|-1, rejected P..P+|y-|-1 (both responses
        continue the prompt), pads 0.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    input_ids, segments, positions = (torch.zeros(len(pairs), width, dtype=torch.long) for _ in range(3))
    for row, pair in enumerate(pairs):
        parts = ((PROMPT, pair.prompt_ids, 0), (CHOSEN, pair.chosen_ids, len(pair.prompt_ids)),
                 (REJECTED, pair.rejected_ids, len(pair.prompt_ids)))
        column = 0 if padding_side == "right" else width - sum(len(ids) for _, ids, _ in parts)
        for segment, ids, first_position in parts:
            span = slice(column, column + len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            segments[row, span] = segment
            positions[row, span] = torch.arange(first_position, first_position + len(ids))
            column += len(ids)
    return input_ids, segments, positions


def _can_pack(model: torch.nn.Module) -> bool:
    """Prompt sharing feeds a custom 4D additive mask: needs eager or SDPA attention and no sliding window."""
    config = unwrap_model(model).config
    if getattr(config, "_attn_implementation", "eager") not in SUPPORTED_ATTENTION:
        return False
    return getattr(config, "sliding_window", None) is None


def packed_pair_inputs(pair: TokenizedPair, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, int]:
    """One (1, T) input holding the prompt once and both responses, for `pair_logps(share_prompt=True)`.

    Layout (0-based, P prompt tokens, R+ and R- response tokens, T = P - 1 + R+ + R-):
        segment 0: x_1 .. x_{P-1}                positions 0 .. P-2
        segment 1: x_P, y+_1 .. y+_{R+ - 1}      positions P-1 .. P+R+-2
        segment 2: x_P, y-_1 .. y-_{R- - 1}      positions P-1 .. P+R--2
    Token i may attend to token j <= i when both are in the same segment or j is in segment 0, so every
    response token sees exactly the tokens it would see in the separate sequence x + y; the mask is additive
    (0 allowed, dtype minimum elsewhere) so eager and SDPA attention read it the same way.

    Returns:
        input_ids (1, T), position_ids (1, T), attention_mask (1, 1, T, T) of `dtype`, and P - 1 (the index of
        the first response-predicting position: positions P-1 .. T-1 predict y+ then y-).
    """
    prefix, last = pair.prompt_ids[:-1], pair.prompt_ids[-1:]
    shifted = TokenizedPair(prefix, last + pair.chosen_ids[:-1], last + pair.rejected_ids[:-1], pair.source_index)
    input_ids, segments, position_ids = pack_pairs([shifted])
    return input_ids, position_ids, packed_attention_mask(segments, dtype), len(prefix)


def _packed_pair_logps(model: torch.nn.Module, pair: TokenizedPair, keep_logits: bool,
                       direct_weight_grads: bool = False) -> tuple[Tensor, Tensor]:
    """Both responses' summed log-probs from one forward over `packed_pair_inputs` (see there), with the fast paths
    of `common.pair_attention` and `common.direct_grads` where their checks pass (the dense mask is passed too)."""
    device = _model_device(model)
    dtype = next(model.parameters()).dtype
    input_ids, position_ids, mask, first = packed_pair_inputs(pair, dtype if dtype.is_floating_point else torch.float32)
    kwargs = {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device),
              "attention_mask": mask.to(device), "use_cache": False}
    if keep_logits:
        kwargs["logits_to_keep"] = torch.arange(first, input_ids.shape[1], device=device)
    inner = unwrap_model(model)
    if direct_weight_grads and can_embed_into_grad(inner):
        kwargs["inputs_embeds"] = embed_into_grad(inner, kwargs.pop("input_ids"))
    with ExitStack() as fast_paths:
        if direct_weight_grads:
            fast_paths.enter_context(linears_into_grad(inner))
        if can_split_attention(inner):  # the mask stays in kwargs: a layer that ignores `pair_split` still uses it
            kwargs["pair_split"] = (first, first + len(pair.chosen_ids))
            fast_paths.enter_context(split_attention_for(inner))
        logits = model(**kwargs).logits[0]
    logits = logits if keep_logits else logits[first:]
    num_chosen = len(pair.chosen_ids)
    if direct_weight_grads or not torch.is_grad_enabled():  # at most one .backward() follows; the reference and
        # evaluation passes (no grad) sum in the same order as the training step, so step-0 margins are exactly 0
        targets = torch.tensor(pair.chosen_ids + pair.rejected_ids, device=device)
        chosen, rejected = segment_summed_logps(logits, targets, (num_chosen, len(pair.rejected_ids)))
        return chosen, rejected
    chosen = summed_token_logps(logits[:num_chosen], torch.tensor(pair.chosen_ids, device=device))
    rejected = summed_token_logps(logits[num_chosen:], torch.tensor(pair.rejected_ids, device=device))
    return chosen, rejected


def pair_logps(model: torch.nn.Module, pair: TokenizedPair, *, share_prompt: bool = True,
               keep_logits: bool | None = None, direct_weight_grads: bool = False) -> tuple[Tensor, Tensor]:
    """log pi(y+|x) and log pi(y-|x) of one pair, unpadded (gradients flow if grad mode is on).

    Args:
        model: Causal LM (possibly wrapped by DDP/PEFT); its device is used for the inputs.
        pair: Token ids (prompt >= 1 token, responses >= 1 token each).
        share_prompt: One forward over the prompt and both responses (`packed_pair_inputs`), so the prompt's
            activations and the weights' gradient are computed once. Falls back to two separate forwards when
            the prompt has one token or the model cannot take a custom 4D mask (flash attention, sliding window).
        keep_logits: Pass `logits_to_keep`; None = detect from the model's forward signature.
        direct_weight_grads: The caller backpropagates with `.backward()` into `.grad` (a training step): the packed
            forward's input embedding and LM head then add their weight gradient straight into `.grad`
            (`common.direct_grads`), and the log-softmax backward reuses one buffer (`common.segment_logps`,
            differentiable once). Leave False when gradients are taken with `torch.autograd.grad`, which would
            not see those two weights' gradients.

    Returns:
        (chosen_logp, rejected_logp): 0-dim float32 tensors (float64 for a float64 model), nats.
    """
    if keep_logits is None:
        keep_logits = supports_logits_to_keep(model)
    if share_prompt and len(pair.prompt_ids) >= 2 and _can_pack(model):
        return _packed_pair_logps(model, pair, keep_logits, direct_weight_grads)
    device = _model_device(model)
    results: list[Tensor] = []
    for response in (pair.chosen_ids, pair.rejected_ids):
        full = torch.tensor([pair.prompt_ids + response[:-1]], device=device)
        logits = _response_logits(model, full, len(response), keep_logits)
        results.append(summed_token_logps(logits, torch.tensor(response, device=device)))
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
