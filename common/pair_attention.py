"""Attention of a packed preference pair (prompt | chosen | rejected) as two causal SDPA calls, no dense mask.

`common.sequence_logprobs.packed_pair_inputs` lays a pair out as one row of T = p + c + r tokens,

    [0, p)         prompt x_1 .. x_{P-1}               (p = P - 1)
    [p, p + c)     x_P, y+_1 .. y+_{R+-1}              (c = R+)
    [p + c, T)     x_P, y-_1 .. y-_{R--1}              (r = R-)

where a response token attends the prompt and the earlier tokens of its own response. With that pattern as a
dense (T, T) additive mask, SDPA's CPU flash kernel visits every (query, key) block. The same attention is

    out[0 : p+c]  = causal attention of rows [0, p+c) over themselves           (prompt + chosen)
    out[p+c : T]  = the last r rows of causal attention of rows [0, p) + [p+c, T)  (prompt + rejected)

i.e. two `is_causal=True` calls, in which the kernel skips the blocks above the diagonal. The second call also
recomputes the prompt rows' own attention (p^2 / 2 pairs, discarded), which is cheaper than a dense mask over
the whole row ((p + c + r)^2). Measured on the 8 pairs of `bench/bench_dpo_step.py` (SmolLM2-135M, fp32, 1 thread,
forward + backward, CPU s): SDPA kernels 0.58 -> 0.42 s per 2 pairs (profile); the whole 8-pair pass 19.04 vs 18.98
s alone (medians of 3, within the noise) and 18.62 -> 18.13 s on top of `common.direct_grads` (medians of 3).

How it is wired: `pair_split_attention` is registered with transformers under `PAIR_SPLIT_ATTENTION` (with the
SDPA mask builder). Given the keyword `pair_split=(p, p + c)` it does the two calls above and ignores the mask;
without it, it is exactly `sdpa_attention_forward`, so a model switched to it behaves like an SDPA model in every
other call. `split_attention_for(model)` switches a model's config to it for the duration of one forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from common.training_settings import is_checkpointing

PAIR_SPLIT_ATTENTION = "ld_pair_split_sdpa"


def pair_split_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                         attention_mask: Tensor | None, pair_split: tuple[int, int] | None = None,
                         **kwargs) -> tuple[Tensor, None]:
    """SDPA attention; with `pair_split=(p, p + c)` the packed-pair attention of the module docstring.

    Args:
        module: The attention module (read by `sdpa_attention_forward` for GQA and `is_causal`).
        query: (1, H, T, D) after rotary embedding; key, value: (1, H_kv, T, D).
        attention_mask: The dense packed-pair mask (used only without `pair_split`).
        pair_split: (p, p + c): the end of the prompt part and the start of the rejected response.
        **kwargs: Passed on to `sdpa_attention_forward` (dropout, scaling, ...).

    Returns:
        ((1, T, H, D) attention output, None), the layout `sdpa_attention_forward` returns.
    """
    if pair_split is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    prompt_end, rejected_start = pair_split
    kwargs.pop("is_causal", None)
    sizes = [prompt_end, rejected_start - prompt_end, query.shape[2] - rejected_start]
    # torch.split, not slicing: its backward concatenates the pieces' gradients instead of zero-filling a
    # full-length buffer per slice (profile of 8 pairs: fill_ + add_ 1.36 -> 1.18 s, cat +0.07 s)
    pieces = [torch.split(t, sizes, dim=2) for t in (query, key, value)]  # each (prompt, chosen, rejected)

    def causal(first: int, second: int) -> Tensor:
        q, k, v = (torch.cat((parts[first], parts[second]), dim=2) for parts in pieces)
        return sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]

    prompt_and_chosen = causal(0, 1)
    rejected = torch.split(causal(0, 2), [prompt_end, sizes[2]], dim=1)[1]
    return torch.cat((prompt_and_chosen, rejected), dim=1), None


AttentionInterface.register(PAIR_SPLIT_ATTENTION, pair_split_attention)
AttentionMaskInterface.register(PAIR_SPLIT_ATTENTION, sdpa_mask)


def can_split_attention(model: torch.nn.Module) -> bool:
    """Whether `split_attention_for` applies: the model (already unwrapped) runs SDPA attention and does not
    recompute its forward in the backward pass (gradient checkpointing would recompute it with plain SDPA)."""
    implementation = getattr(model.config, "_attn_implementation", None)
    return implementation in ("sdpa", PAIR_SPLIT_ATTENTION) and not is_checkpointing(model)


@contextmanager
def split_attention_for(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` (unwrapped, `can_split_attention`) with `pair_split_attention` inside the block.

    The previous implementation name is restored on exit; since the registered function equals SDPA for every
    call without `pair_split`, a concurrent caller that sees the switched name still gets SDPA's numbers.
    """
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = PAIR_SPLIT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
