"""Tests for ches/ches.py: formulas by hand, positions via a fake model, padding/batch invariance, filters."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ches.ches import (
    MEASURE_NAMES, ches_from_sums, compute_pair_measures, iterate_pair_measures, levenshtein_distance,
    ln_ches_from_sums, measures_from_summaries, minus_normalized_edit_distance, pack_pairs,
    packed_attention_mask, reference_pair_summaries, relative_difference, select_lowest_k, select_quantile_window,
    summaries_in_threads, summarize_pair_hidden_states, summarize_pair_with_prompt_cache,
)
from common.preference_data import TokenizedPair


class TokenEmbeddingModel(torch.nn.Module):
    """Fake base transformer: the hidden state at a position is a fixed vector of the token there (no mixing),
    so h(x, y<k) is the vector of the token *before* response token k (the last prompt token for k = 1)."""

    def __init__(self, vectors: list[list[float]], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(torch.tensor(vectors, dtype=dtype))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        return SimpleNamespace(last_hidden_state=self.table(input_ids), past_key_values=None)


# token -> hidden vector: 0 (pad) -> (0,0), 1 -> (1,0), 2 -> (0,1), 3 -> (1,1), 9 -> (5,5)
VECTORS = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]] + [[0.0, 0.0]] * 5 + [[5.0, 5.0]]


def test_ches_hand_values():
    """S+ = (1,0): with S- = (1,1), 1 - 1 = 0; with S- = (0,1), 0 - 1 = -1.
    ln: S+ = (2,0), |y+| = 2 and S- = (3,3), |y-| = 3 normalise to (1,0), (1,1) -> 0."""
    chosen = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    rejected = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert ches_from_sums(chosen, rejected).tolist() == [0.0, -1.0]
    assert ln_ches_from_sums(torch.tensor([[2.0, 0.0]]), torch.tensor([[3.0, 3.0]]), torch.tensor([2]),
                             torch.tensor([3])).tolist() == [0.0]


def test_positions_summed_on_fake_model():
    """Prompt [9, 1], chosen [2, 3, EOS], rejected [3, EOS] (EOS = token 8, vector (0,0)): the reference's
    convention, responses [2, 3] and [3] summed from the last prompt token to the last response token.
    S+ = h(1) + h(2) + h(3) = (1,0) + (0,1) + (1,1) = (2,2); S- = h(1) + h(3) = (2,1).
    CHES = <(2,2),(2,1)> - ||(2,2)||² = 6 - 8 = -2. ln (|y+| = 3, |y-| = 2): <(2/3,2/3),(1,1/2)> - 8/9 = 1/9.
    Last hidden states: token 3 on both sides (not the EOS): <(1,1),(1,1)> = 2.
    Edit distance without the EOS, [2, 3] -> [3]: one deletion over max length 2 -> -0.5."""
    model = TokenEmbeddingModel(VECTORS)
    pair = TokenizedPair(prompt_ids=[9, 1], chosen_ids=[2, 3, 8], rejected_ids=[3, 8], source_index=0)
    summaries = summarize_pair_hidden_states(model, [pair])
    assert summaries.chosen_sums.tolist() == [[2.0, 2.0]] and summaries.rejected_sums.tolist() == [[2.0, 1.0]]
    assert summaries.chosen_final.tolist() == [[1.0, 1.0]] and summaries.rejected_final.tolist() == [[1.0, 1.0]]
    for batch_size in (1, 2):
        measures = compute_pair_measures(model, [pair, pair], batch_size=batch_size)
        assert measures["ches_scores"] == [-2.0, -2.0]
        assert measures["ln_ches_scores"] == pytest.approx([1 / 9, 1 / 9])
        assert measures["minus_normalized_edit_distances"] == [-0.5, -0.5]
        assert measures["last_hidden_embedding_inner_prods"] == [2.0, 2.0]


def test_eos_only_response_uses_the_last_prompt_token():
    """Rejected = [EOS] only: S- = h(last prompt token) = (1,0), and so is its last hidden state."""
    summaries = summarize_pair_hidden_states(TokenEmbeddingModel(VECTORS), [TokenizedPair([9, 1], [2, 8], [8], 0)])
    assert summaries.rejected_sums.tolist() == [[1.0, 0.0]] and summaries.rejected_final.tolist() == [[1.0, 0.0]]
    assert summaries.chosen_final.tolist() == [[0.0, 1.0]]


def test_packed_rows_and_mask_literal():
    """Pair 0: prompt [5, 6], chosen [7], rejected [8, 9] (5 tokens); pair 1: prompt [4], chosen [3], rejected
    [2] (3 tokens, padded). Rejected positions restart after the prompt; the mask hides the chosen token from
    the rejected ones, and pads attend only to themselves."""
    pairs = [TokenizedPair([5, 6], [7], [8, 9], 0), TokenizedPair([4], [3], [2], 1)]
    ids, segments, positions = pack_pairs(pairs, "left")
    assert ids.tolist() == [[5, 6, 7, 8, 9], [0, 0, 4, 3, 2]]
    assert segments.tolist() == [[1, 1, 2, 3, 3], [0, 0, 1, 2, 3]]
    assert positions.tolist() == [[0, 1, 2, 2, 3], [0, 0, 0, 1, 1]]
    ids, segments, positions = pack_pairs(pairs, "right")
    assert ids.tolist()[1] == [4, 3, 2, 0, 0] and positions.tolist()[1] == [0, 1, 1, 0, 0]
    allowed = packed_attention_mask(segments, torch.float32)[:, 0] == 0
    assert allowed[0].int().tolist() == [[1, 0, 0, 0, 0],   # prompt 5
                                         [1, 1, 0, 0, 0],   # prompt 6
                                         [1, 1, 1, 0, 0],   # chosen 7
                                         [1, 1, 0, 1, 0],   # rejected 8: prompt + itself, not chosen
                                         [1, 1, 0, 1, 1]]   # rejected 9
    assert allowed[1].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0],
                                         [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]  # rows 3, 4: pads, self only


def test_fp32_accumulation_under_bfloat16():
    """Prompt [1], chosen = 256 x token 1 then token 3, rejected [2]. S+ sums 257 vectors (1,0) = (257,0)
    (257 is not representable in bf16, which would round it to 256); S- = h(last prompt token) = (1,0).
    CHES = 257 - 257² = -65792 exactly (bf16 arithmetic would give 256 - 65536 = -65280)."""
    model = TokenEmbeddingModel(VECTORS, dtype=torch.bfloat16)
    pair = TokenizedPair(prompt_ids=[1], chosen_ids=[1] * 256 + [3], rejected_ids=[2], source_index=0)
    summaries = summarize_pair_hidden_states(model, [pair])
    assert summaries.chosen_sums.dtype == torch.float32
    assert compute_pair_measures(model, [pair])["ches_scores"] == [-65792.0]


def random_pairs(count: int, vocab_size: int, seed: int) -> list[TokenizedPair]:
    generator = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randint(1, vocab_size, (int(torch.randint(1, 9, (1,), generator=generator)),),
                                 generator=generator).tolist()
    return [TokenizedPair(draw(), draw(), draw(), i) for i in range(count)]


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_padding_side_and_batch_size_invariance(model_name):
    """Prompts/responses of 1..8 tokens; every padding side and batch size matches a batch-1 full forward."""
    from common.models import load_model_and_tokenizer

    model = load_model_and_tokenizer(model_name)[0].eval()
    pairs = random_pairs(7, vocab_size=1000, seed=1)
    reference = [measures_from_summaries(reference_pair_summaries(model, pair), [pair]) for pair in pairs]
    for padding_side in ("left", "right"):
        for batch_size in (1, 3, 7):
            measures = compute_pair_measures(model, pairs, batch_size=batch_size, padding_side=padding_side)
            for name in ("ches_scores", "ln_ches_scores", "last_hidden_embedding_inner_prods"):
                torch.testing.assert_close(torch.tensor(measures[name], dtype=torch.float64),
                                           torch.tensor([r[name][0] for r in reference], dtype=torch.float64),
                                           rtol=1e-5, atol=1e-6)
    packed = summarize_pair_hidden_states(model, pairs[:1])
    assert relative_difference(packed, reference_pair_summaries(model, pairs[0])) < 1e-5
    cached = summarize_pair_with_prompt_cache(model, pairs[0])  # what batch_size 1 runs
    assert cached is not None and relative_difference(cached, reference_pair_summaries(model, pairs[0])) < 1e-5


def test_pairs_in_threads_match_the_sequential_loop_and_restore_torch_threads():
    """Batch 1 with 3 pair threads gives the sequential (1 thread) numbers in input order; stopping the iteration
    early cancels the rest and gives torch its thread count back."""
    from common.models import load_model_and_tokenizer

    model = load_model_and_tokenizer("tiny-llama")[0].eval()
    pairs = random_pairs(9, vocab_size=1000, seed=2)
    threads_before = torch.get_num_threads()
    sequential = compute_pair_measures(model, pairs, batch_size=1, pair_threads=1)
    threaded = compute_pair_measures(model, pairs, batch_size=1, pair_threads=3)
    assert torch.get_num_threads() == threads_before
    for name in MEASURE_NAMES:
        torch.testing.assert_close(torch.tensor(threaded[name], dtype=torch.float64),
                                   torch.tensor(sequential[name], dtype=torch.float64), rtol=1e-6, atol=1e-7)
    iterator = iterate_pair_measures(model, pairs, batch_size=1, pair_threads=3)
    next(iterator), next(iterator)
    assert torch.get_num_threads() == 1  # the worker threads are running
    iterator.close()
    assert torch.get_num_threads() == threads_before
    streamed = list(summaries_in_threads(model, pairs[:4], threads=2))
    for pair, summaries in zip(pairs[:4], streamed):
        assert relative_difference(summaries, reference_pair_summaries(model, pair)) < 1e-5


def test_edit_distance_hand_values():
    """kitten -> sitting: 2 substitutions + 1 insertion = 3; a sequence vs empty = its length."""
    kitten, sitting = [ord(c) for c in "kitten"], [ord(c) for c in "sitting"]
    assert levenshtein_distance(kitten, sitting) == 3 and levenshtein_distance(sitting, kitten) == 3
    assert levenshtein_distance([], [1, 2, 3]) == 3 and levenshtein_distance([4, 5], [4, 5]) == 0
    assert levenshtein_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2  # delete 1 at the front, insert it at the end
    assert minus_normalized_edit_distance([1, 2, 3], [1, 3]) == pytest.approx(-1 / 3)
    assert minus_normalized_edit_distance([1, 2], [3, 4]) == -1.0


def test_lowest_k_and_quantile_window():
    """scores [5, 1, nan, 3, 2, 4]: valid positions by score 1(1), 4(2), 3(3), 5(4), 0(5), n = 5.
    lowest 2 -> {1, 4}; q = 1, k = 2 -> {5, 0}; q = 0.5, k = 3: centre rank round(0.5 * 4) = 2, ranks 1..3 ->
    {4, 3, 5}; q = 0.25, k = 2: centre round(1) = 1, start 0 -> {1, 4}."""
    scores = [5.0, 1.0, math.nan, 3.0, 2.0, 4.0]
    assert select_lowest_k(scores, 2) == [1, 4]
    assert select_quantile_window(scores, 2, 0.0) == [1, 4]
    assert select_quantile_window(scores, 2, 1.0) == [0, 5]
    assert select_quantile_window(scores, 3, 0.5) == [3, 4, 5]
    assert select_quantile_window(scores, 2, 0.25) == [1, 4]
    assert select_quantile_window(scores, 5, 0.5) == [0, 1, 3, 4, 5]
    assert select_lowest_k([1.0, 1.0, 1.0], 2) == [0, 1]  # ties: earlier position first
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        select_lowest_k(scores, 6)
    with pytest.raises(ValueError, match="quantile must be in"):
        select_quantile_window(scores, 2, 1.5)


def test_benchmark_score_scales_hand_values():
    """S+ = (3, 4), S- = (5, 12), |y+| = 5, |y-| = 13: ches scale 5 (5 + 13) = 90; length-normalised means have
    norm 1 each, scale 1 (1 + 1) = 2; final states (1, 0), (0, 2): 1 x 2 = 2."""
    from bench.bench_ches import score_scales
    from ches.ches import PairHiddenSummaries

    summaries = PairHiddenSummaries(torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 12.0]]),
                                    torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    pair = TokenizedPair([1], [2] * 5, [3] * 13, 0)
    assert score_scales(summaries, pair) == pytest.approx(
        {"ches_scores": 90.0, "ln_ches_scores": 2.0, "last_hidden_embedding_inner_prods": 2.0})


def test_identical_responses_give_exactly_zero():
    """chosen == rejected: CHES and LN-CHES are exactly 0 and the final product is ||h||² (here h(3) = (1,1): 2)."""
    pair = TokenizedPair([9, 1], [2, 3, 8], [2, 3, 8], 0)
    measures = compute_pair_measures(TokenEmbeddingModel(VECTORS), [pair], batch_size=2)
    assert measures == {"ches_scores": [0.0], "ln_ches_scores": [0.0], "minus_normalized_edit_distances": [0.0],
                        "last_hidden_embedding_inner_prods": [2.0]}
