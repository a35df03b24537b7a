"""CHES and the other per-pair similarity measures (Razin et al., ICLR 2025, Section 5). One definition, used
everywhere (the similarity script, the benchmark, the trainers' filters).

For a prompt x and responses y+ (chosen), y- (rejected), h(x, y<k) is the last-layer hidden state (after the
final norm, i.e. `hidden_states[-1]` of a full forward) at the position that predicts response token k; the
last prompt token predicts token 1, response token k-1 predicts token k. With S± = Σ_{k=1..|y±|} h(x, y±<k):

    ches     = <S+, S->  - ||S+||²
    ln_ches  = <S+/|y+|, S-/|y-|> - ||S+/|y+|||²
    minus_normalized_edit_distance  = - Levenshtein(y+, y-) / max(|y+| - 1, |y-| - 1), over the response ids
        without the final EOS
    last_hidden_embedding_inner_prod = <h+_final, h-_final>, h±_final = hidden state at the last response
        token before the EOS (the last prompt token for an EOS-only response), the last position summed in S±.

Each response ends with the EOS (`common.preference_tokenization`, `eos_after_truncation=True`: appended after
truncation), and |y±| counts it. So S± sums the hidden states from the last prompt token to the last response
token, |y±| of them: exactly the reference script's `hidden_states[-1][0][query_len - 1:]` (its responses carry
no EOS), its lengths, its last-hidden position and its edit distance. The EOS's own hidden state is not used.
Hidden states are cast to fp32 before summing, whatever the model dtype; the inner products are then taken in
fp64 (no overflow / cancellation trouble for 8B models in half precision).

Speed: only the model's base transformer is called (no LM head), in one of two ways.
- Batch 1 (`summarize_pair_with_prompt_cache`; the fastest on CPU): prompt + chosen in one causal call that
  keeps its key/value cache, then the rejected response over the prompt's part of that cache. Two calls per
  pair, the prompt computed once, no mask and no padding. On CPU, as many pairs run at once as torch has
  threads, each with single-threaded ops (`summaries_in_threads`).
- Batches (`summarize_pair_hidden_states`; for GPUs): rows packed as [prompt | chosen | rejected] with a 4D
  attention mask that lets each response see the prompt and itself only and position ids that restart after
  the prompt for the rejected response, so the prompt is computed once and there is no padding between the two
  responses. Rows are padded on either side; every position is found through segment masks, never through
  offsets that assume one side. The price is the masked chosen x rejected block of attention and the padding
  between rows, which a GPU absorbs and a CPU does not (bench/RESULTS_ches.md).
"""

from __future__ import annotations

import collections
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from ches.results_file import (  # noqa: F401  (re-exported: the file's field names and reader live there)
    LENGTH_NAMES, MEASURE_NAMES, load_similarity_results,
)
from common.preference_data import TokenizedPair
from common.sequence_logprobs import (  # noqa: F401  (pack_pairs, packed_attention_mask: re-exported)
    CHOSEN, PROMPT, REJECTED, SUPPORTED_ATTENTION, pack_pairs, packed_attention_mask, transformer_body,
)



def ches_from_sums(chosen_sums: torch.Tensor, rejected_sums: torch.Tensor) -> torch.Tensor:
    """CHES = <S+, S-> - ||S+||², row-wise, computed in fp64.

    Args:
        chosen_sums: S+, shape (B, D). rejected_sums: S-, shape (B, D).

    Returns:
        Shape (B,), float64. E.g. S+ = (1, 0), S- = (1, 1): 1 - 1 = 0; S- = (0, 1): 0 - 1 = -1.
    """
    chosen, rejected = chosen_sums.double(), rejected_sums.double()
    return (chosen * rejected).sum(-1) - (chosen * chosen).sum(-1)


def ln_ches_from_sums(chosen_sums: torch.Tensor, rejected_sums: torch.Tensor, chosen_lengths: torch.Tensor,
                      rejected_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalised CHES: `ches_from_sums(S+/|y+|, S-/|y-|)`. Lengths have shape (B,); returns (B,) fp64."""
    return ches_from_sums(chosen_sums.double() / chosen_lengths.double().unsqueeze(-1),
                          rejected_sums.double() / rejected_lengths.double().unsqueeze(-1))


def levenshtein_distance(first: Sequence[int], second: Sequence[int]) -> int:
    """Edit distance (insert / delete / substitute, each cost 1) between two token sequences.

    Row-by-row dynamic programme, vectorised with numpy: for row i, the insert-free candidates
    t[j] = min(D[i-1][j] + 1, D[i-1][j-1] + [a_i != b_j]) are combined with insertions through
    D[i][j] = min_{k<=j} (t[k] + j - k) = j + cummin(t[k] - k).
    """
    a, b = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    previous = np.arange(len(b) + 1, dtype=np.int64)
    offsets = np.arange(len(b) + 1, dtype=np.int64)
    for i, token in enumerate(a, start=1):
        candidates = np.empty_like(previous)
        candidates[0] = i
        candidates[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (b != token))
        previous = offsets + np.minimum.accumulate(candidates - offsets)
    return int(previous[-1])


def minus_normalized_edit_distance(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> float:
    """- Levenshtein(y+, y-) / max(|y+|, |y-|), in [-1, 0]; 0 for identical sequences (and two empty ones)."""
    longest = max(len(chosen_ids), len(rejected_ids))
    return 0.0 if longest == 0 else -levenshtein_distance(chosen_ids, rejected_ids) / longest


base_transformer = transformer_body  # the name this module exported before (common.sequence_logprobs)


@dataclass
class PairHiddenSummaries:
    """Per-pair hidden-state summaries of one batch, all fp32, rows in the order of the input pairs.

    Attributes:
        chosen_sums, rejected_sums: S±, shape (B, D).
        chosen_final, rejected_final: hidden state at the last position summed in S± (the last response token
            before the EOS), shape (B, D).
    """

    chosen_sums: torch.Tensor
    rejected_sums: torch.Tensor
    chosen_final: torch.Tensor
    rejected_final: torch.Tensor


def _last_position(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last True in each row of a (B, L) bool mask. Shape (B,)."""
    columns = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * columns).argmax(-1)


@torch.no_grad()
def summarize_pair_hidden_states(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *,
                                 padding_side: str = "right") -> PairHiddenSummaries:
    """One forward of the base transformer over packed rows [prompt | chosen | rejected] (see `pack_pairs`,
    `packed_attention_mask`): the prompt is computed once, both responses attend to it as if each followed it
    alone, and there is no padding between the two responses.

    Summed positions for y (length n): the last prompt token, then response tokens 1..n-1 (all found through
    the segment masks, whichever side the padding is on); the last of them is the "final" position.
    """
    attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if attention not in SUPPORTED_ATTENTION:
        raise ValueError(f"CHES needs a custom 4D attention mask; the model uses attn_implementation "
                         f"{attention!r}. Load it with attn_implementation in {SUPPORTED_ATTENTION}")
    decoder = transformer_body(model)
    parameter = next(model.parameters())
    input_ids, segments, positions = (t.to(parameter.device) for t in pack_pairs(pairs, padding_side))
    mask = packed_attention_mask(segments, getattr(model, "dtype", parameter.dtype))
    hidden = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                     use_cache=False).last_hidden_state.float()  # (B, L, D)
    rows = torch.arange(len(pairs), device=hidden.device)
    prompt_last_position = _last_position(segments == PROMPT)
    prompt_last = hidden[rows, prompt_last_position]  # predicts response token 1, (B, D)
    results = []
    for segment in (CHOSEN, REJECTED):
        in_response = segments == segment
        predicting = in_response.clone()
        predicting[rows, _last_position(in_response)] = False  # the EOS predicts nothing inside the response
        sums = prompt_last + (hidden * predicting.unsqueeze(-1).float()).sum(dim=1)
        final = torch.where(predicting.any(-1), _last_position(predicting), prompt_last_position)
        results.append((sums, hidden[rows, final]))
    (chosen_sums, chosen_final), (rejected_sums, rejected_final) = results
    return PairHiddenSummaries(chosen_sums, rejected_sums, chosen_final, rejected_final)


def _prompt_cache(cache: DynamicCache, prompt_length: int, config) -> DynamicCache:
    """A new DynamicCache holding the first `prompt_length` positions of `cache` (views, no copy; extending it
    leaves `cache` as it was)."""
    return DynamicCache(ddp_cache_data=[(keys[..., :prompt_length, :], values[..., :prompt_length, :])
                                        for keys, values, *_ in cache], config=config)


@torch.no_grad()
def summarize_pair_with_prompt_cache(model: torch.nn.Module, pair: TokenizedPair) -> PairHiddenSummaries | None:
    """Batch-1 path, two calls of the base transformer: prompt + chosen (causal, no mask, key/value cache kept),
    then the rejected response over the prompt's part of that cache.

    Same positions and sums as `summarize_pair_hidden_states`, but no packed (P+C+R)^2 attention: the rejected
    response attends to the prompt and itself only (R x (P+R) scores), nothing is masked out after being
    computed, and there is no padding. Returns None when the model's cache is not a plain full-attention
    DynamicCache (e.g. sliding-window layers); the caller then uses the packed path.
    """
    decoder = transformer_body(model)
    device = next(model.parameters()).device
    prompt_length, chosen_length = len(pair.prompt_ids), len(pair.chosen_ids)
    first = decoder(input_ids=torch.tensor([pair.prompt_ids + pair.chosen_ids], device=device), use_cache=True)
    cache = first.past_key_values
    if not isinstance(cache, DynamicCache) or any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
        return None
    hidden = first.last_hidden_state[0].float()  # (P + C, D)
    prompt_last = hidden[prompt_length - 1:prompt_length]  # (1, D), predicts response token 1
    chosen_sums = hidden[prompt_length - 1:prompt_length - 1 + chosen_length].sum(0, keepdim=True)
    rejected = decoder(input_ids=torch.tensor([pair.rejected_ids], device=device), use_cache=True,
                       past_key_values=_prompt_cache(cache, prompt_length, model.config)
                       ).last_hidden_state[0].float()  # (R, D)
    chosen_final = hidden[prompt_length + chosen_length - 2:prompt_length + chosen_length - 1]
    rejected_final = rejected[-2:-1] if len(pair.rejected_ids) > 1 else prompt_last
    return PairHiddenSummaries(chosen_sums, prompt_last + rejected[:-1].sum(0, keepdim=True), chosen_final,
                               rejected_final)


@torch.no_grad()
def reference_pair_summaries(model: torch.nn.Module, pair: TokenizedPair) -> PairHiddenSummaries:
    """Slow reference (what most code does): for each response a full forward of the causal LM over
    prompt + response with `output_hidden_states=True`, batch 1, no padding, positions by index arithmetic.
    Used by the benchmark, the tests and the script's self-check; same positions as
    `summarize_pair_hidden_states`."""
    device = next(model.parameters()).device
    start = len(pair.prompt_ids) - 1  # the last prompt token predicts response token 1
    sums, finals = [], []
    for response in (pair.chosen_ids, pair.rejected_ids):
        input_ids = torch.tensor([pair.prompt_ids + response], device=device)
        hidden = model(input_ids=input_ids, output_hidden_states=True).hidden_states[-1][0].float()  # (L, D)
        sums.append(hidden[start:start + len(response)].sum(0, keepdim=True))
        finals.append(hidden[start + len(response) - 1:start + len(response)])
    return PairHiddenSummaries(sums[0], sums[1], finals[0], finals[1])


def relative_difference(summaries: PairHiddenSummaries, reference: PairHiddenSummaries) -> float:
    """Largest ||a - b|| / ||b|| over the four summaries (per row), e.g. packed vs `reference_pair_summaries`."""
    worst = 0.0
    for name in ("chosen_sums", "rejected_sums", "chosen_final", "rejected_final"):
        a, b = getattr(summaries, name).double().cpu(), getattr(reference, name).double().cpu()
        worst = max(worst, ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)).max().item())
    return worst


def measures_from_summaries(summaries: PairHiddenSummaries, pairs: Sequence[TokenizedPair]
                            ) -> dict[str, list[float]]:
    """All MEASURE_NAMES for a batch (lists of length B, same order as `pairs`). The edit distance compares the
    response ids without their final EOS (module docstring). A pair with identical responses uses the chosen
    summaries for both sides, so its CHES is exactly 0, as in the reference (where both forwards are the same
    computation); the two paths here differ only by float rounding."""
    chosen_lengths = torch.tensor([len(p.chosen_ids) for p in pairs])
    rejected_lengths = torch.tensor([len(p.rejected_ids) for p in pairs])
    identical = torch.tensor([p.chosen_ids == p.rejected_ids for p in pairs]).unsqueeze(-1)
    chosen_sums = summaries.chosen_sums.cpu()
    rejected_sums = torch.where(identical, chosen_sums, summaries.rejected_sums.cpu())
    chosen_final = summaries.chosen_final.double().cpu()
    rejected_final = torch.where(identical, chosen_final, summaries.rejected_final.double().cpu())
    final_products = (chosen_final * rejected_final).sum(-1)
    return {
        "ches_scores": ches_from_sums(chosen_sums, rejected_sums).tolist(),
        "ln_ches_scores": ln_ches_from_sums(chosen_sums, rejected_sums, chosen_lengths, rejected_lengths).tolist(),
        "minus_normalized_edit_distances": [minus_normalized_edit_distance(p.chosen_ids[:-1], p.rejected_ids[:-1])
                                            for p in pairs],
        "last_hidden_embedding_inner_prods": final_products.tolist(),
    }


def length_sorted_batches(pairs: Sequence[TokenizedPair], batch_size: int) -> list[list[int]]:
    """Positions into `pairs` grouped into batches of similar length, longest first (memory errors show early).

    Length = packed row length, prompt + chosen + rejected. Ties keep the input order (stable sort)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def summaries_in_threads(model: torch.nn.Module, pairs: Sequence[TokenizedPair], threads: int
                         ) -> Iterator[PairHiddenSummaries | None]:
    """`summarize_pair_with_prompt_cache` of each pair, in order, computed `threads` pairs at a time.

    Each pair runs in its own Python thread with single-threaded torch ops (the GIL is released inside the ops),
    so the cores work on different pairs instead of splitting every small matrix product of one pair: no OpenMP
    barrier per op, which on a CPU shared with other jobs is where multi-threaded ops lose most of their time.
    Same numbers as the sequential loop up to float rounding. At most 2 * `threads` pairs are in flight; stopping
    the iteration (an error, Ctrl-C) cancels the ones not started. torch's thread count is restored at the end.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # read by each new worker thread on its first op
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ches-pair")
    try:
        in_flight: collections.deque = collections.deque()
        for pair in pairs:
            in_flight.append(pool.submit(summarize_pair_with_prompt_cache, model, pair))
            if len(in_flight) >= 2 * threads:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous_threads)


def iterate_pair_measures(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, batch_size: int = 8,
                          padding_side: str = "right", pair_threads: int | None = None
                          ) -> Iterator[tuple[list[int], dict[str, list[float]]]]:
    """Yield (positions into `pairs`, measures of those pairs) batch by batch, in length-sorted order.

    `batch_size` 1 runs `summarize_pair_with_prompt_cache` (no masked or padded attention: the fastest choice on
    CPU), `pair_threads` pairs at a time (`summaries_in_threads`; default: torch's thread count on CPU, 1 on an
    accelerator). Larger batches run the packed path (for GPUs). A model whose cache the batch-1 path cannot
    share (decided on the first pair) runs the packed path one pair at a time."""
    batches = length_sorted_batches(pairs, batch_size)
    if batch_size == 1 and batches:
        first = summarize_pair_with_prompt_cache(model, pairs[batches[0][0]])
        if first is not None:
            on_cpu = next(model.parameters()).device.type == "cpu"
            threads = pair_threads or (torch.get_num_threads() if on_cpu else 1)
            rest = [pairs[positions[0]] for positions in batches[1:]]
            summaries = summaries_in_threads(model, rest, threads) if threads > 1 else (
                summarize_pair_with_prompt_cache(model, pair) for pair in rest)
            for positions, pair_summaries in zip(batches, itertools.chain([first], summaries)):
                yield positions, measures_from_summaries(pair_summaries, [pairs[positions[0]]])
            return
    for batch_positions in batches:
        batch = [pairs[i] for i in batch_positions]
        summaries = summarize_pair_hidden_states(model, batch, padding_side=padding_side)
        yield batch_positions, measures_from_summaries(summaries, batch)


def compute_pair_measures(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, batch_size: int = 8,
                          padding_side: str = "right", pair_threads: int | None = None) -> dict[str, list[float]]:
    """All MEASURE_NAMES for every pair, in the order of `pairs` (batches are length-sorted internally)."""
    results = {name: [math.nan] * len(pairs) for name in MEASURE_NAMES}
    for positions, measures in iterate_pair_measures(model, pairs, batch_size=batch_size, padding_side=padding_side,
                                                     pair_threads=pair_threads):
        for name in MEASURE_NAMES:
            for position, value in zip(positions, measures[name]):
                results[name][position] = value
    return results


def _valid_sorted_positions(scores: Sequence[float], k: int) -> list[int]:
    values = np.asarray(scores, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(values))
    if not 1 <= k <= len(valid):
        raise ValueError(f"k must be in [1, {len(valid)}] (non-NaN scores out of {len(values)}), got {k}")
    return valid[np.argsort(values[valid], kind="stable")].tolist()


def select_lowest_k(scores: Sequence[float], k: int) -> list[int]:
    """Positions of the k lowest non-NaN scores, returned in increasing position order.

    Ties are broken by position (earlier first). NaN scores (skipped examples) are never selected."""
    return sorted(_valid_sorted_positions(scores, k)[:k])


def select_quantile_window(scores: Sequence[float], k: int, quantile: float) -> list[int]:
    """Positions of k consecutive scores (in sorted order) centred on the `quantile` of the non-NaN scores.

    With the n valid scores sorted ascending (ties by position), the centre is rank c = round(q * (n - 1));
    the window starts at c - k // 2, shifted to stay inside [0, n - k]. So q = 0 gives the lowest k, q = 1 the
    highest k. Returned in increasing position order.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    ranked = _valid_sorted_positions(scores, k)
    centre = round(quantile * (len(ranked) - 1))
    start = min(max(centre - k // 2, 0), len(ranked) - k)
    return sorted(ranked[start:start + k])
