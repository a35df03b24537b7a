"""Tests for common/losses.py: every loss against a hand-computed value, gradient signs, sft term, validation."""

import math

import pytest
import torch

from common.losses import (LOSSES, LossConfig, PreferenceLogps, compute_preference_loss, log1mexp, log_odds,
                           loss_needs_reference)

ALL_NAMES = ("cross_entropy", "dpo", "ipo", "cdpo", "robust_dpo", "hinge", "simpo", "dpop", "rdpo", "rrhf", "orpo")
# Hyper-parameters that make every objective valid (used by the generic tests).
VALID_HYPERPARAMETERS = dict(label_smoothing=0.25, simpo_gamma=1.0, dpop_lambda=5.0, rdpo_alpha=0.5, orpo_lambda=0.1)


def make_logps(policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None,
               chosen_length=1, rejected_length=1, requires_grad=False) -> PreferenceLogps:
    """A batch of one pair from plain numbers."""
    def vector(value):
        return None if value is None else torch.tensor([float(value)], requires_grad=requires_grad)
    return PreferenceLogps(vector(policy_chosen), vector(policy_rejected), vector(reference_chosen),
                           vector(reference_rejected), torch.tensor([chosen_length]), torch.tensor([rejected_length]))


def loss_value(objective: str, logps: PreferenceLogps, **fields) -> float:
    return float(compute_preference_loss(LossConfig(objective=objective, **fields), logps).losses[0])


def test_registry_has_every_loss():
    assert set(LOSSES) == set(ALL_NAMES)
    assert all(spec.name == name and spec.doc for name, spec in LOSSES.items())


def test_cross_entropy():
    """-pi+ = -(-3) = 3; the rejected response plays no role."""
    assert loss_value("cross_entropy", make_logps(-3.0, -1.0)) == pytest.approx(3.0)


@pytest.mark.parametrize("margin, beta, expected", [
    (0.0, 0.1, 0.693147),    # -log sigmoid(0) = ln 2
    (10.0, 0.1, 0.313262),   # -log sigmoid(0.1 * 10) = log(1 + e^-1)
])
def test_dpo(margin, beta, expected):
    """Margin h = (pi+ - ref+) - (pi- - ref-) = (m - 0) - (0 - 0) with pi+ = -5 + m, ref+ = -5."""
    logps = make_logps(-5.0 + margin, -7.0, -5.0, -7.0)
    assert loss_value("dpo", logps, kl_coeff=beta) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("margin, expected", [(0.0, 25.0), (5.0, 0.0), (7.0, 4.0)])
def test_ipo_summed(margin, expected):
    """beta 0.1 -> target 1/(2 * 0.1) = 5: (0 - 5)^2 = 25, (5 - 5)^2 = 0, (7 - 5)^2 = 4."""
    logps = make_logps(-5.0 + margin, -7.0, -5.0, -7.0, chosen_length=2, rejected_length=4)
    assert loss_value("ipo", logps, kl_coeff=0.1) == pytest.approx(expected, abs=1e-5)


def test_ipo_length_normalized():
    """pi+ - ref+ = 10 over 2 tokens -> 5 per token; rejected ratio 0: h = 5 -> (5 - 5)^2 = 0.
    Summed instead: h = 10 -> (10 - 5)^2 = 25."""
    logps = make_logps(0.0, -3.0, -10.0, -3.0, chosen_length=2, rejected_length=4)
    assert loss_value("ipo", logps, kl_coeff=0.1, ipo_length_normalized=True) == pytest.approx(0.0, abs=1e-6)
    assert loss_value("ipo", logps, kl_coeff=0.1) == pytest.approx(25.0)


def test_cdpo_and_robust_dpo():
    """beta h = ln 3 -> sigmoid = 3/4, sigmoid(-ln 3) = 1/4; eps = 1/4.
    cdpo   = -(3/4) ln(3/4) - (1/4) ln(1/4) = 0.215762 + 0.346574 = 0.562335
    robust = (-(3/4) ln(3/4) + (1/4) ln(1/4)) / (1 - 1/2) = (0.215762 - 0.346574) * 2 = -0.261624."""
    logps = make_logps(math.log(3.0), -1.0, 0.0, -1.0)
    assert loss_value("cdpo", logps, kl_coeff=1.0, label_smoothing=0.25) == pytest.approx(0.562335, abs=1e-6)
    assert loss_value("robust_dpo", logps, kl_coeff=1.0, label_smoothing=0.25) == pytest.approx(-0.261624, abs=1e-6)
    # eps = 0 reduces both to DPO: -log sigmoid(ln 3) = ln(4/3) = 0.287682.
    assert loss_value("cdpo", logps, kl_coeff=1.0, label_smoothing=0.0) == pytest.approx(0.287682, abs=1e-6)


@pytest.mark.parametrize("margin, expected", [(5.0, 0.5), (20.0, 0.0), (-10.0, 2.0)])
def test_hinge(margin, expected):
    """max(0, 1 - 0.1 h): h = 5 -> 0.5, h = 20 -> 0, h = -10 -> 2."""
    logps = make_logps(margin, 0.0, 0.0, 0.0)
    assert loss_value("hinge", logps, kl_coeff=0.1) == pytest.approx(expected, abs=1e-6)


def test_simpo():
    """beta 2, gamma 1: 2 * (-4/2) - 2 * (-12/4) - 1 = -4 + 6 - 1 = 1 -> log(1 + e^-1) = 0.313262."""
    logps = make_logps(-4.0, -12.0, chosen_length=2, rejected_length=4)
    output = compute_preference_loss(LossConfig(objective="simpo", kl_coeff=2.0, simpo_gamma=1.0), logps)
    assert float(output.losses[0]) == pytest.approx(0.313262, abs=1e-6)
    assert float(output.chosen_rewards[0]) == pytest.approx(-4.0)
    assert float(output.rejected_rewards[0]) == pytest.approx(-6.0)


def test_dpop():
    """beta 0.1, lambda 5; pi+ - ref+ = -2, pi- - ref- = -12 -> h = 10, penalty 5 * max(0, 2) = 10:
    -log sigmoid(0.1 * (10 - 10)) = ln 2. With pi+ above its reference (+2, -8) no penalty: DPO at h 10."""
    below = make_logps(-7.0, -20.0, -5.0, -8.0)
    assert loss_value("dpop", below, kl_coeff=0.1, dpop_lambda=5.0) == pytest.approx(0.693147, abs=1e-6)
    above = make_logps(-3.0, -16.0, -5.0, -8.0)
    assert loss_value("dpop", above, kl_coeff=0.1, dpop_lambda=5.0) == pytest.approx(0.313262, abs=1e-6)


def test_dpop_gradient_at_the_kink_uses_the_clamp_subgradient():
    """pi = ref for both responses (step 0): h = 0, margin 0, sigmoid(0) = 1/2. beta 0.1, lambda 2:
    dL/dpi+ = -beta * 1/2 * (1 + lambda) = -0.05 * 3 = -0.15 (relu'(0) = 0 would give -0.05);
    dL/dpi- = +beta * 1/2 = 0.05."""
    logps = make_logps(-3.0, -4.0, -3.0, -4.0, requires_grad=True)
    compute_preference_loss(LossConfig(objective="dpop", kl_coeff=0.1, dpop_lambda=2.0), logps).losses.sum().backward()
    assert float(logps.policy_chosen.grad[0]) == pytest.approx(-0.15, abs=1e-7)
    assert float(logps.policy_rejected.grad[0]) == pytest.approx(0.05, abs=1e-7)


def test_rdpo():
    """beta 0.1, alpha 0.5, h = 0, |y+| = 4, |y-| = 2: -log sigmoid(0 + 0.5 * (4 - 2)) = log(1 + e^-1)."""
    logps = make_logps(-5.0, -7.0, -5.0, -7.0, chosen_length=4, rejected_length=2)
    assert loss_value("rdpo", logps, kl_coeff=0.1, rdpo_alpha=0.5) == pytest.approx(0.313262, abs=1e-6)


def test_rrhf():
    """p+ = -4/2 = -2, p- = -3/3 = -1: max(0, -1 - (-2)) = 1, plus NLL -pi+ = 4 -> 5.
    Ranked correctly (p+ = -1 > p- = -2): only the NLL, 2."""
    assert loss_value("rrhf", make_logps(-4.0, -3.0, chosen_length=2, rejected_length=3)) == pytest.approx(5.0)
    assert loss_value("rrhf", make_logps(-2.0, -6.0, chosen_length=2, rejected_length=3)) == pytest.approx(2.0)


def test_orpo():
    """Mean log-probs: y+ ln(1/2) (2 tokens, pi+ = 2 ln(1/2)) -> odds 1, log odds 0; y- ln(1/3) -> odds 1/2,
    log odds -ln 2. OR term -log sigmoid(ln 2) = -ln(2/3) = 0.405465; NLL -ln(1/2) = 0.693147;
    lambda 0.1: 0.693147 + 0.0405465 = 0.733694."""
    logps = make_logps(2 * math.log(0.5), math.log(1 / 3), chosen_length=2, rejected_length=1)
    output = compute_preference_loss(LossConfig(objective="orpo", orpo_lambda=0.1), logps)
    assert float(output.losses[0]) == pytest.approx(0.733694, abs=1e-5)
    assert float(output.rejected_rewards[0]) == pytest.approx(-math.log(2), abs=1e-6)


def test_log_odds_is_finite_at_probability_one():
    assert torch.isfinite(log_odds(torch.tensor([0.0, -1e-9]))).all()


def test_log1mexp_hand_values():
    """log(1 - 1/2) = ln(1/2) (far branch); log(1 - e^-1e-7) = ln(1e-7 - 5e-15) = -16.118096 (near branch)."""
    values = log1mexp(torch.tensor([math.log(0.5), -1e-7], dtype=torch.float64))
    assert values.tolist() == pytest.approx([math.log(0.5), -16.1180956], abs=1e-6)


def test_orpo_keeps_the_odds_ratio_gradient_near_probability_one():
    """y+ mean log-prob x = -1e-7 (1 token, P = e^x, 1 - P ~ 1e-7), y- x- = -1, lambda 0.1.
    odds- = e^-1 / (1 - e^-1) = 0.5819767; d log odds+ / dx = 1 / (1 - P); the OR term's gradient is
    -lambda * sigmoid(-(lo+ - lo-)) / (1 - P) = -lambda * odds- / (P + odds- (1 - P)) = -0.0581977, plus -1
    from the NLL: -1.0581977. The old clamp at P <= 1 - 1e-6 gave exactly -1 (odds-ratio gradient lost)."""
    chosen = torch.tensor([-1e-7], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    logps = PreferenceLogps(chosen, rejected, None, None, torch.tensor([1]), torch.tensor([1]))
    compute_preference_loss(LossConfig(objective="orpo", orpo_lambda=0.1), logps).losses.sum().backward()
    assert float(chosen.grad[0]) == pytest.approx(-1.0581977, abs=1e-6)


def test_orpo_gradient_is_finite_at_probability_one_in_float32():
    """x+ = 0 (P = 1 exactly) and -1e-9 (exp(x) rounds to 1 in float32): finite loss and gradients."""
    chosen = torch.tensor([0.0, -1e-9], requires_grad=True)
    rejected = torch.tensor([-1.0, -1.0], requires_grad=True)
    logps = PreferenceLogps(chosen, rejected, None, None, torch.tensor([1, 1]), torch.tensor([1, 1]))
    losses = compute_preference_loss(LossConfig(objective="orpo", orpo_lambda=0.1), logps).losses
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_sft_coeff_adds_summed_nll():
    """DPO at zero margin (ln 2) + 0.5 * (-pi+) with pi+ = -2 -> 0.693147 + 1."""
    logps = make_logps(-2.0, -7.0, -2.0, -7.0)
    assert loss_value("dpo", logps, sft_coeff=0.5) == pytest.approx(1.693147, abs=1e-6)
    assert loss_value("simpo", make_logps(-4.0, -12.0, chosen_length=2, rejected_length=4), kl_coeff=2.0,
                      simpo_gamma=1.0, sft_coeff=1.0) == pytest.approx(0.313262 + 4.0, abs=1e-6)


def test_dpo_rewards():
    """beta (pi - ref): 0.1 * (-3 - -5) = 0.2 and 0.1 * (-9 - -7) = -0.2; detached."""
    output = compute_preference_loss(LossConfig(), make_logps(-3.0, -9.0, -5.0, -7.0, requires_grad=True))
    assert float(output.chosen_rewards[0]) == pytest.approx(0.2)
    assert float(output.rejected_rewards[0]) == pytest.approx(-0.2)
    assert not output.chosen_rewards.requires_grad and output.losses.requires_grad


@pytest.mark.parametrize("objective", ALL_NAMES)
@pytest.mark.parametrize("sft_coeff", [0.0, 1.0])
def test_gradient_signs(objective, sft_coeff):
    """Every loss falls when log pi(y+|x) rises (d loss / d pi+ < 0) and, except SFT, when log pi(y-|x) falls.

    Point: pi+ - ref+ = -0.5, pi- - ref- = 0.5 (h = -1, inside every loss's active region), p+ = -2.5, p- = -2.
    """
    logps = make_logps(-5.0, -6.0, -4.5, -6.5, chosen_length=2, rejected_length=3, requires_grad=True)
    config = LossConfig(objective=objective, sft_coeff=sft_coeff, **VALID_HYPERPARAMETERS)
    compute_preference_loss(config, logps).losses.sum().backward()
    assert float(logps.policy_chosen.grad[0]) < 0
    if objective == "cross_entropy":
        assert logps.policy_rejected.grad is None or float(logps.policy_rejected.grad[0]) == 0
    else:
        assert float(logps.policy_rejected.grad[0]) > 0


@pytest.mark.parametrize("objective", ALL_NAMES)
def test_batched_shapes_and_reference_requirement(objective):
    batch = PreferenceLogps(*(torch.randn(3) - 5 for _ in range(4)), torch.tensor([1, 2, 3]), torch.tensor([2, 2, 1]))
    output = compute_preference_loss(LossConfig(objective=objective, **VALID_HYPERPARAMETERS), batch)
    assert output.losses.shape == output.chosen_rewards.shape == output.rejected_rewards.shape == (3,)
    without_reference = PreferenceLogps(batch.policy_chosen, batch.policy_rejected, None, None,
                                        batch.chosen_lengths, batch.rejected_lengths)
    if loss_needs_reference(objective):
        with pytest.raises(ValueError, match="needs reference log-probs"):
            compute_preference_loss(LossConfig(objective=objective, **VALID_HYPERPARAMETERS), without_reference)
    else:
        compute_preference_loss(LossConfig(objective=objective, **VALID_HYPERPARAMETERS), without_reference)


def test_shape_mismatch_is_an_error():
    logps = make_logps(-1.0, -2.0, -1.0, -2.0)
    logps.reference_rejected = torch.zeros(2)
    with pytest.raises(ValueError, match="reference_rejected has shape"):
        compute_preference_loss(LossConfig(), logps)


def test_validation_unknown_objective_lists_names_and_suggests():
    problems = LossConfig(objective="dpoo").validate()
    assert len(problems) == 1
    assert "Did you mean: dpo" in problems[0] and all(name in problems[0] for name in ALL_NAMES)
    with pytest.raises(ValueError, match="unknown loss 'sigmoid'"):
        loss_needs_reference("sigmoid")


@pytest.mark.parametrize("objective, field", [("simpo", "simpo_gamma"), ("cdpo", "label_smoothing"),
                                              ("robust_dpo", "label_smoothing"), ("dpop", "dpop_lambda"),
                                              ("rdpo", "rdpo_alpha"), ("orpo", "orpo_lambda")])
def test_validation_missing_hyperparameter(objective, field):
    problems = LossConfig(objective=objective, kl_coeff=0.1).validate()
    assert len(problems) == 1 and f"requires {field}" in problems[0] and objective in problems[0]


@pytest.mark.parametrize("fields, fragment", [
    (dict(kl_coeff=0.0), "kl_coeff must be > 0"),
    (dict(objective="cdpo", label_smoothing=0.5), "label_smoothing must be in [0, 0.5)"),
    (dict(objective="dpop", dpop_lambda=-1.0), "dpop_lambda must be >= 0"),
    (dict(sft_coeff=-0.1), "sft_coeff must be"),
])
def test_validation_ranges(fields, fragment):
    problems = LossConfig(**fields).validate()
    assert len(problems) == 1 and fragment in problems[0]


def test_valid_configs_have_no_problems():
    assert LossConfig().validate() == []
    assert LossConfig(objective="cross_entropy", kl_coeff=0.0).validate() == []  # beta unused by SFT
    for name in ALL_NAMES:
        assert LossConfig(objective=name, **VALID_HYPERPARAMETERS).validate() == []
