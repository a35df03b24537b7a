"""The last-position forward equals the model's own full forward at each prompt's last real token."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from persona_experiments.forward import last_position_forward, unembedding_matrix, use_sparse_embedding_gradient
from tests.conftest import assert_close_at_precision


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=32)).eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_last_position_forward_matches_full_forward(kind):
    model = _tiny(kind)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    input_ids = torch.tensor([prompts[0], prompts[1] + [0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = last_position_forward(model, input_ids, attention_mask, torch.tensor([4, 2]))
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            expected = model(torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(out.logits[row], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.logprobs[row], expected.log_softmax(-1), atol=1e-5, rtol=1e-5)
    assert out.hidden.shape == (2, 16)
    assert unembedding_matrix(model).shape == (50, 16)


def test_sparse_embedding_gradient_gives_the_dense_gradient():
    """Tied GPT-2: the summed (embedding + head) gradient is dense and equal with or without `sparse`; an untied
    model is left alone."""
    grads = []
    for sparse in (False, True):
        model = _tiny("gpt2")
        if sparse:
            assert use_sparse_embedding_gradient(model) and model.get_input_embeddings().sparse
        out = last_position_forward(model, torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long),
                                    torch.tensor([3]))
        (out.logprobs[0, 9] - 2 * out.logprobs[0, 3]).backward()
        weight_grad = unembedding_matrix(model).grad
        assert not weight_grad.is_sparse
        grads.append(torch.cat([weight_grad.flatten()] + [p.grad.flatten() for n, p in model.named_parameters()
                                                         if "wte" not in n]))
    assert_close_at_precision(grads[1], grads[0])  # summation orders differ: float32 rounding only
    untied = _tiny("llama")
    assert not use_sparse_embedding_gradient(untied) and not untied.get_input_embeddings().sparse
