"""Tests for common/grad_entanglement.py: hand-computed statistics, the first-order condition, parameter subsets."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from common.grad_entanglement import (GradEntanglementConfig, entanglement_from_gradients, gradient_entanglement,
                                      is_due, score_predictions, select_parameters, summarize_entanglement)
from common.losses import LossConfig, PreferenceLogps, dpo_loss
from common.models import load_model_and_tokenizer
from persona_experiments.config import PersonaConfig
from preference_training.config import PreferenceTrainingConfig


def test_statistics_from_hand_vectors():
    """g+ = (1, 0), g- = (2, 1): <g+, g-> = 2, ||g+||^2 = 1, ||g-||^2 = 5 -> cosine 2/sqrt 5, ratio 2/min(1, 5) = 2,
    1 < 2 < 5 so both log-probs are predicted to fall (and the preferred one too, 2 > 1)."""
    stats = entanglement_from_gradients([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 1.0])])
    assert stats["inner_product"] == pytest.approx(2.0)
    assert stats["norm_chosen"] == pytest.approx(1.0) and stats["norm_rejected"] == pytest.approx(math.sqrt(5))
    assert stats["cosine"] == pytest.approx(2 / math.sqrt(5)) and stats["ratio"] == pytest.approx(2.0)
    assert stats["chosen_decrease_predicted"] and stats["both_decrease_predicted"]
    # Orthogonal gradients: inner 0 < ||g+||^2 = 1, neither predicted; a missing (None) gradient counts as zero.
    orthogonal = entanglement_from_gradients([torch.tensor([1.0, 0.0]), None], [torch.tensor([0.0, 1.0]), None])
    assert orthogonal["cosine"] == 0.0 and not orthogonal["chosen_decrease_predicted"]
    assert not orthogonal["both_decrease_predicted"]
    zero = entanglement_from_gradients([torch.zeros(2)], [torch.tensor([0.0, 1.0])])
    assert math.isnan(zero["cosine"]) and math.isnan(zero["ratio"]) and not zero["both_decrease_predicted"]


def test_linear_softmax_by_hand():
    """logits = W h, W = 0 (4 x 2), h = (1, 2): p = 1/4 each; grad_W log p_y = (e_y - p) h^T.
    y+ = 0, y- = 1: <e0 - p, e1 - p> = -3/16 - 3/16 + 1/16 + 1/16 = -1/4, ||e_y - p||^2 = 9/16 + 3/16 = 3/4,
    ||h||^2 = 5 -> <g+, g-> = -5/4, ||g+||^2 = ||g-||^2 = 15/4, cosine = ratio = -1/3.
    The hidden vector h (also trainable here) gets grad W^T (e_y - p) = 0."""
    weight = torch.nn.Parameter(torch.zeros(4, 2))
    hidden = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.ones(3))
    log_probs = F.log_softmax(weight @ hidden, dim=-1)
    [stats] = gradient_entanglement([weight, hidden, unused], [(log_probs[0], log_probs[1])])
    assert stats["inner_product"] == pytest.approx(-1.25)
    assert stats["norm_chosen"] == pytest.approx(math.sqrt(3.75)) == stats["norm_rejected"]
    assert stats["cosine"] == pytest.approx(-1 / 3) and stats["ratio"] == pytest.approx(-1 / 3)
    assert not stats["chosen_decrease_predicted"] and not stats["both_decrease_predicted"]
    assert stats["logp_chosen"] == pytest.approx(math.log(0.25))
    assert weight.grad is None  # .grad untouched


def test_graph_is_retained_for_the_training_backward():
    weight = torch.nn.Parameter(torch.randn(5, 3))
    log_probs = F.log_softmax(weight @ torch.ones(3), dim=-1)
    gradient_entanglement([weight], [(log_probs[0], log_probs[1]), (log_probs[2], log_probs[1])])
    (-log_probs[0]).backward()
    assert weight.grad is not None


@pytest.mark.parametrize("rejected_direction, both_fall", [((2.0, 1.0), True), ((0.0, 1.0), False)])
def test_first_order_condition_matches_a_dpo_sgd_step(rejected_direction, both_fall):
    """Log-probs linear in theta: lp+ = a.theta, lp- = b.theta, so g+ = a, g- = b exactly. One SGD step on the DPO
    loss moves theta by eta c (a - b); with a = (1, 0), b = (2, 1) both fall (1 < 2 < 5), with b = (0, 1) the
    preferred rises. The prediction scores 1.0 against the observed change."""
    theta = torch.nn.Parameter(torch.zeros(2))
    a, b = torch.tensor([1.0, 0.0]), torch.tensor(rejected_direction)

    def logps():
        return a @ theta, b @ theta

    stats = gradient_entanglement([theta], [logps()])
    assert stats[0]["both_decrease_predicted"] is both_fall
    chosen, rejected = logps()
    batch = PreferenceLogps(chosen.reshape(1), rejected.reshape(1), torch.zeros(1), torch.zeros(1),
                            torch.ones(1), torch.ones(1))
    dpo_loss(batch, beta=0.1).losses.mean().backward()
    with torch.no_grad():
        theta -= 0.01 * theta.grad
        after = logps()
    assert (float(after[0]) < 0 and float(after[1]) < 0) is both_fall
    scores = score_predictions(stats, [float(after[0])], [float(after[1])])
    assert scores["both_decrease_accuracy"] == 1.0 and scores["chosen_decrease_accuracy"] == 1.0


def test_score_predictions_by_hand():
    """Predicted both-fall [True, False]; observed: example 0 both fell, example 1 both fell -> accuracy 1/2.
    Predicted preferred-fall [True, True], observed [True, True] -> 1."""
    stats = [dict(logp_chosen=-1.0, logp_rejected=-2.0, chosen_decrease_predicted=True, both_decrease_predicted=True),
             dict(logp_chosen=-1.0, logp_rejected=-2.0, chosen_decrease_predicted=True, both_decrease_predicted=False)]
    scores = score_predictions(stats, [-1.5, -1.1], [-2.5, -2.1])
    assert scores == {"chosen_decrease_accuracy": 1.0, "both_decrease_accuracy": 0.5,
                      "chosen_decrease_observed": 1.0, "both_decrease_observed": 1.0}
    with pytest.raises(ValueError, match="equally many"):
        score_predictions(stats, [-1.5], [-2.5, -2.1])


def test_summary_means_and_fractions():
    stats = [entanglement_from_gradients([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 1.0])]),
             entanglement_from_gradients([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])])]
    summary = summarize_entanglement(stats)
    assert summary["grad_entanglement/inner_product"] == pytest.approx(1.0)
    assert summary["grad_entanglement/both_decrease_predicted"] == pytest.approx(0.5)
    assert summary["grad_entanglement/cosine"] == pytest.approx(1 / math.sqrt(5))


def test_config_validation_and_schedule():
    assert GradEntanglementConfig().validate() == []
    problems = GradEntanglementConfig(grad_entanglement_interval=0, grad_entanglement_max_examples=0,
                                      grad_entanglement_params="head").validate()
    assert len(problems) == 3 and "'unembedding'" in problems[2]
    # every family config composes the fields (LossConfig alone no longer carries them: issue 14)
    assert PersonaConfig(grad_entanglement_params="head").validate()
    assert PreferenceTrainingConfig(grad_entanglement_params="head").validate()
    assert not is_due(None, 0) and is_due(5, 0) and is_due(5, 10) and not is_due(5, 3)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def test_unembedding_statistics_match_closed_form_on_tiny_llama():
    """For the untied unembedding U, grad_U log p_y = (e_y - p) h^T (h the final normed hidden state), so
    <g+, g-> = (||p||^2 - p+ - p-) ||h||^2 and ||g+||^2 = (1 - 2 p+ + ||p||^2) ||h||^2."""
    model = tiny_llama()
    input_ids = torch.tensor([[1, 5, 7]])
    hidden = model.model(input_ids).last_hidden_state[0, -1]
    probs = torch.softmax(model.lm_head(hidden), dim=-1).detach()
    log_probs = torch.log_softmax(model.lm_head(hidden), dim=-1)
    chosen, rejected = 3, 4
    [stats] = gradient_entanglement(select_parameters(model, "unembedding"), [(log_probs[chosen], log_probs[rejected])])
    square_norm_p, h2 = float(probs @ probs), float(hidden.detach() @ hidden.detach())
    assert stats["inner_product"] == pytest.approx((square_norm_p - probs[chosen] - probs[rejected]) * h2, rel=1e-4)
    assert stats["norm_chosen"] ** 2 == pytest.approx((1 - 2 * probs[chosen] + square_norm_p) * h2, rel=1e-4)


def test_parameter_subsets_on_tiny_llama():
    model = tiny_llama()
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    assert select_parameters(model, "unembedding")[0] is model.lm_head.weight
    last = select_parameters(model, "last_layer")
    assert {id(p) for p in last} == {id(p) for p in model.model.layers[-1].parameters()}
    with pytest.raises(ValueError, match="no trainable parameters"):
        select_parameters(model, "lora")
    with pytest.raises(ValueError, match="unknown subset"):
        select_parameters(model, "embeddings")


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")
def test_parameter_subsets_with_lora():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora = select_parameters(model, "lora")
    assert len(lora) == 2 * 2 * 2  # A and B, two modules, two layers
    assert {id(p) for p in select_parameters(model, "all")} == {id(p) for p in lora}
    assert {id(p) for p in select_parameters(model, "last_layer")} <= {id(p) for p in lora}
    with pytest.raises(ValueError, match="use 'lora' or 'all'"):
        select_parameters(model, "unembedding")  # frozen base weights


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_parameter_subsets_on_builtin_models(name):
    model, _ = load_model_and_tokenizer(name)
    assert select_parameters(model, "unembedding")[0] is model.get_output_embeddings().weight
    last = select_parameters(model, "last_layer")
    assert 0 < sum(p.numel() for p in last) < sum(p.numel() for p in model.parameters())
