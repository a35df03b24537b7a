"""Fast paths of the packed-pair step: split causal attention, gradients written straight into .grad.

Run: python -m pytest tests/test_fast_pair_paths.py -x -q
"""

from __future__ import annotations

import pytest
import torch

from common.attribute_swap import swapped_attributes
from common.direct_grads import _EmbeddingIntoGrad, _LinearIntoGrad, can_embed_into_grad, linears_into_grad
from common.models import load_model_and_tokenizer
from common.pair_attention import can_split_attention, pair_split_attention
from common.preference_data import TokenizedPair
from common.segment_logps import segment_summed_logps
from common.sequence_logprobs import packed_pair_inputs, pair_logps


class _OneHeadAttention(torch.nn.Module):
    """What `sdpa_attention_forward` reads from an attention module: no GQA, causal."""

    is_causal = True
    num_key_value_groups = 1


def test_split_attention_by_hand():
    """Zero queries and keys: every allowed key gets equal weight, so each output is the mean of the values it may
    see. Layout p=1 | c=2 | r=2, values 1..5: prompt [1]; chosen [1,2] [1,2,3]; rejected [1,4] [1,4,5]."""
    zeros = torch.zeros(1, 1, 5, 4)
    values = torch.arange(1.0, 6.0).reshape(1, 1, 5, 1).expand(1, 1, 5, 4).contiguous()
    output, weights = pair_split_attention(_OneHeadAttention(), zeros, zeros, values, None, pair_split=(1, 3))
    assert weights is None and output.shape == (1, 5, 1, 4)
    torch.testing.assert_close(output[0, :, 0, 0], torch.tensor([1.0, 1.5, 2.0, 2.5, 10 / 3]), rtol=0, atol=1e-6)


def test_split_attention_equals_dense_packed_mask():
    """Random q, k, v on the layout of `packed_pair_inputs`: same output as SDPA with the dense packed mask."""
    generator = torch.Generator().manual_seed(0)
    pair = TokenizedPair([1, 2, 3, 4], [5, 6, 7], [8, 9], 0)  # p = 3, c = 3, r = 2
    _, _, mask, first = packed_pair_inputs(pair, torch.float32)
    query, key, value = (torch.randn(1, 2, 8, 4, generator=generator) for _ in range(3))
    module = _OneHeadAttention()
    dense, _ = pair_split_attention(module, query, key, value, mask)  # no pair_split: plain SDPA with the mask
    split, _ = pair_split_attention(module, query, key, value, mask, pair_split=(first, first + 3))
    torch.testing.assert_close(split, dense, rtol=0, atol=1e-6)


def test_linear_into_grad_by_hand():
    """h = [1, 2], W = [[1, 0], [0, 1], [1, 1]], L = logits . [1, 0, 2]: logits [1, 2, 3], dL/dh = g W = [3, 2],
    dL/dW = g^T h = [[1, 2], [0, 0], [2, 4]], added to an existing .grad of ones."""
    hidden = torch.tensor([[1.0, 2.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    logits = _LinearIntoGrad.apply(hidden, weight, None)
    assert logits.tolist() == [[1.0, 2.0, 3.0]]
    weight.grad = torch.ones(3, 2)
    (logits * torch.tensor([1.0, 0.0, 2.0])).sum().backward()
    assert hidden.grad.tolist() == [[3.0, 2.0]]
    assert weight.grad.tolist() == [[2.0, 3.0], [1.0, 1.0], [3.0, 5.0]]


def test_embedding_into_grad_by_hand():
    """ids [1, 1, 3, 0] with padding_idx 3, output gradients [1,2], [3,4], [5,6], [7,8]: row 1 gets [4, 6], row 0
    [7, 8], the padding row 3 nothing (as nn.Embedding), row 2 nothing."""
    weight = torch.arange(8.0).reshape(4, 2).requires_grad_()
    embeddings = _EmbeddingIntoGrad.apply(weight, torch.tensor([1, 1, 3, 0]), 3)
    assert embeddings.tolist() == [[2.0, 3.0], [2.0, 3.0], [6.0, 7.0], [0.0, 1.0]]
    (embeddings * torch.arange(1.0, 9.0).reshape(4, 2)).sum().backward()
    assert weight.grad.tolist() == [[7.0, 8.0], [4.0, 6.0], [0.0, 0.0], [0.0, 0.0]]


def test_linear_into_grad_bias_by_hand():
    """Two rows h = [1, 0], [0, 1], W = I, b = [1, -1]: outputs [2, -1], [1, 0]; L = sum(outputs * [[1, 2], [3, 4]])
    gives dL/db = column sums [4, 6] added to an existing bias .grad of [1, 1]."""
    hidden = torch.eye(2)
    weight, bias = torch.eye(2).requires_grad_(), torch.tensor([1.0, -1.0], requires_grad=True)
    outputs = _LinearIntoGrad.apply(hidden, weight, bias)
    assert outputs.tolist() == [[2.0, -1.0], [1.0, 0.0]]
    bias.grad = torch.ones(2)
    (outputs * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert bias.grad.tolist() == [5.0, 7.0]
    assert weight.grad.tolist() == [[1.0, 3.0], [2.0, 4.0]]  # g^T h = g^T


def test_linears_into_grad_patches_every_plain_linear_and_restores():
    """tiny-llama: the 7 projections of each layer and the LM head are patched inside the block, nothing after."""
    model, _ = load_model_and_tokenizer("tiny-llama")
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with linears_into_grad(model):
        assert all("forward" in m.__dict__ for m in linears)
    assert not any("forward" in m.__dict__ for m in linears)
    assert len(linears) == 7 * model.config.num_hidden_layers + 1


def test_segment_summed_logps_by_hand():
    """Logits rows [0, 0] (p = [1/2, 1/2]) and [ln 3, 0] (p = [3/4, 1/4]), targets 0 and 1, one segment each:
    L = [ln 1/2, ln 1/4]. Upstream g = [1, -2]: dL/dz row 0 = 1 * ([1, 0] - [1/2, 1/2]) = [0.5, -0.5], row 1 =
    -2 * ([0, 1] - [3/4, 1/4]) = [1.5, -1.5]."""
    logits = torch.tensor([[0.0, 0.0], [torch.log(torch.tensor(3.0)), 0.0]], requires_grad=True)
    sums = segment_summed_logps(logits, torch.tensor([0, 1]), [1, 1])
    torch.testing.assert_close(sums, torch.log(torch.tensor([0.5, 0.25])))
    (sums * torch.tensor([1.0, -2.0])).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.5, -0.5], [1.5, -1.5]]))


def test_segment_summed_logps_refuses_a_second_backward():
    """The backward reuses its saved buffer, so a retained graph fails loudly instead of giving wrong numbers."""
    logits = torch.zeros(3, 4, requires_grad=True)
    sums = segment_summed_logps(logits, torch.tensor([0, 1, 2]), [2, 1])
    sums.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        sums.sum().backward()
    with pytest.raises(ValueError, match="segment lengths"):
        segment_summed_logps(logits, torch.tensor([0, 1, 2]), [2, 2])


def _parameter_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_fast_packed_path_gradients_equal_plain_path(model_name):
    """Two pairs accumulated into .grad (so the direct-to-.grad writes meet an existing gradient): the packed
    forward with every fast path (split attention, embedding and LM head into .grad) against the plain path (two
    ordinary forwards per pair, `share_prompt=False`): same log-probs and gradients of sum(c - 2 r) to 2e-6
    relative to the largest gradient entry (fp32)."""
    model, _ = load_model_and_tokenizer(model_name)
    model.eval()
    assert can_split_attention(model) and can_embed_into_grad(model)  # the fast paths are the ones under test
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    pairs = [TokenizedPair(list(range(5, 25)), list(range(30, 47)), list(range(50, 61)), 0),
             TokenizedPair([3, 9, 27, 81], [100, 7], [200, 201, 202, 203, 204, 205], 1)]
    results = []
    for share_prompt in (True, False):
        model.zero_grad(set_to_none=True)
        logps = []
        for pair in pairs:
            chosen, rejected = pair_logps(model, pair, share_prompt=share_prompt, direct_weight_grads=share_prompt)
            (chosen - 2 * rejected).backward()
            logps.append(torch.stack([chosen, rejected]).detach())
        results.append((torch.stack(logps), _parameter_grads(model)))
    (fast_logps, fast_grads), (plain_logps, plain_grads) = results
    torch.testing.assert_close(fast_logps, plain_logps, rtol=1e-5, atol=1e-5)
    largest = plain_grads.abs().max()
    assert ((fast_grads - plain_grads).abs().max() / largest).item() < 2e-6


def test_default_packed_path_serves_torch_autograd_grad():
    """Without `direct_weight_grads` (gradient entanglement takes gradients with torch.autograd.grad), every
    parameter's gradient comes back through autograd, equal to the `.backward()` path with direct writes, and
    `.grad` stays untouched."""
    model, _ = load_model_and_tokenizer("tiny-llama")
    model.eval()
    pair = TokenizedPair(list(range(5, 25)), list(range(30, 47)), list(range(50, 61)), 0)
    params = list(model.parameters())
    chosen, rejected = pair_logps(model, pair)
    through_autograd = torch.autograd.grad(chosen - 2 * rejected, params)
    assert all(p.grad is None for p in params)
    chosen, rejected = pair_logps(model, pair, direct_weight_grads=True)
    (chosen - 2 * rejected).backward()
    expected = _parameter_grads(model)
    got = torch.cat([g.flatten() for g in through_autograd])
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 2e-6


def test_swapped_attributes_restores_own_and_inherited_attributes_after_an_error():
    """An instance attribute gets its old value back, an inherited one (the class's method) is deleted again, in
    reverse order, also when the block raises; the yielded count is the number of attributes set."""

    class Owner:
        def forward(self) -> str:
            return "class"

    owner = Owner()
    owner.scale = 1.0
    with pytest.raises(RuntimeError, match="inside"):
        with swapped_attributes([(owner, "forward", lambda: "swapped"), (owner, "scale", 2.0)]) as count:
            assert (count, owner.forward(), owner.scale) == (2, "swapped", 2.0)
            raise RuntimeError("inside")
    assert owner.forward() == "class" and "forward" not in vars(owner)
    assert owner.scale == 1.0
