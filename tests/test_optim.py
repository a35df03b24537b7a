"""The optimizer registry and ScratchRMSprop: bitwise the same updates and state as torch's RMSprop."""

import pytest
import torch

from common.optim import ScratchRMSprop, build_optimizer


def _params_and_grads(seed: int) -> tuple[list[torch.nn.Parameter], list[list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    return params, grads


def _run(optimizer_cls, **kwargs) -> tuple[list[torch.Tensor], dict]:
    params, grads = _params_and_grads(0)
    optimizer = optimizer_cls(params, **kwargs)
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict()


@pytest.mark.parametrize("kwargs", [{"lr": 1e-2}, {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6},
                                    {"lr": 1e-2, "momentum": 0.5}, {"lr": 1e-2, "centered": True}])
def test_scratch_rmsprop_is_bitwise_torch_rmsprop(kwargs):
    ours, our_state = _run(ScratchRMSprop, **kwargs)
    theirs, their_state = _run(torch.optim.RMSprop, **kwargs)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine, reference)
    for index, state in their_state["state"].items():
        assert our_state["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(our_state["state"][index][key], value)


def test_scratch_rmsprop_first_step_by_hand():
    """One step from v = 0: v = (1 - alpha) g^2, p <- p - lr g / (sqrt(v) + eps) with alpha 0.99, eps 1e-8."""
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    param.grad = torch.tensor([0.5, -0.1])
    ScratchRMSprop([param], lr=0.01).step()
    expected = torch.tensor([1.0 - 0.01 * 0.5 / (0.1 * 0.5 + 1e-8), -2.0 + 0.01 * 0.1 / (0.1 * 0.1 + 1e-8)])
    torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7)  # |update| = lr / sqrt(0.01) = 0.1


def test_build_optimizer_errors():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="unknown name 'lion'"):
        build_optimizer("lion", params, 1e-3)
    with pytest.raises(ValueError, match="lr must be > 0"):
        build_optimizer("adam", params, 0.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2), requires_grad=False)], 1e-3)
    assert isinstance(build_optimizer("rmsprop", params, 1e-3), ScratchRMSprop)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_on_cpu_is_torchs_fused_kernel_by_hand(name):
    """First Adam step, p = [1, -2], g = [0.5, 0.5], lr 0.1, no weight decay: m_hat = g, v_hat = g^2, so each
    weight moves by lr * g / (|g| + eps) = 0.1 against its gradient's sign: [0.9, -2.1]."""
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = build_optimizer(name, [parameter], 0.1)
    assert optimizer.param_groups[0]["fused"] is True
    parameter.grad = torch.tensor([0.5, 0.5])
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.tensor([0.9, -2.1]), rtol=0, atol=1e-6)
