"""`torch_compile`: the compiled elementwise blocks equal the modules they replace, training gives the same numbers,
and a failing compiler falls back to the eager functions.

Run: python -m pytest tests/test_compiled_blocks.py -x -q
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import transformers.models.llama.modeling_llama as modeling_llama

import common.compiled_blocks as compiled_blocks
from common.compiled_blocks import compiled_elementwise_blocks, rms_norm, rotary, swiglu
from common.models import load_model_and_tokenizer
from tests.test_preference_trainer import run_training, small_config


def test_rms_norm_swiglu_rotary_by_hand():
    # x = [3, 4]: mean(x^2) = 12.5, so x / sqrt(12.5) = [0.8485, 1.1314]; times w = [1, 2]
    torch.testing.assert_close(rms_norm(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]), 0.0),
                               torch.tensor([3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]))
    # silu(1) * 2 = 2 / (1 + e^-1); silu(0) * 5 = 0
    torch.testing.assert_close(swiglu(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 5.0])),
                               torch.tensor([2 / (1 + math.exp(-1)), 0.0]))
    # q = [1, 2, 3, 4]: cos 0 and sin 1 rotate it to [-3, -4, 1, 2]; k with cos 1, sin 0 stays
    query = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    cos, sin = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    rotated, _ = rotary(query, query, cos, sin)
    assert rotated.flatten().tolist() == [-3.0, -4.0, 1.0, 2.0]
    _, same = rotary(query, query, sin, cos)
    assert same.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_eager_functions_equal_the_transformers_modules():
    model, _ = load_model_and_tokenizer("tiny-llama")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 5, model.config.hidden_size, generator=generator)
    norm, mlp = model.model.norm, model.model.layers[0].mlp
    assert torch.equal(rms_norm(hidden, norm.weight, norm.variance_epsilon), norm(hidden))
    assert torch.equal(mlp.down_proj(swiglu(mlp.gate_proj(hidden), mlp.up_proj(hidden))), mlp(hidden))
    query, key = torch.randn(1, 2, 5, 8, generator=generator), torch.randn(1, 1, 5, 8, generator=generator)
    cos, sin = torch.randn(1, 5, 8, generator=generator), torch.randn(1, 5, 8, generator=generator)
    for ours, theirs in zip(rotary(query, key, cos, sin), modeling_llama.apply_rotary_pos_emb(query, key, cos, sin)):
        assert torch.equal(ours, theirs)


def test_blocks_are_switched_inside_and_restored_after():
    model, _ = load_model_and_tokenizer("tiny-llama")
    layers = model.config.num_hidden_layers
    plain_rotary = modeling_llama.apply_rotary_pos_emb
    with compiled_elementwise_blocks(model) as switched:
        assert switched == 2 * layers + 1 + layers + 1  # two norms per layer, the final norm, the MLPs, rotary
        assert modeling_llama.apply_rotary_pos_emb is not plain_rotary
    assert modeling_llama.apply_rotary_pos_emb is plain_rotary
    assert not any("forward" in module.__dict__ for module in model.modules())
    with compiled_elementwise_blocks(model, enabled=False) as switched:
        assert switched == 0
    gpt2, _ = load_model_and_tokenizer("tiny-gpt2")  # LayerNorm, GELU MLP, no rotary: nothing to switch
    with compiled_elementwise_blocks(gpt2) as switched:
        assert switched == 0


def test_training_with_torch_compile_gives_the_same_numbers(tmp_path):
    _, plain = run_training(small_config(tmp_path, model="tiny-llama"), tmp_path / "plain")
    _, compiled = run_training(small_config(tmp_path, model="tiny-llama", torch_compile=True), tmp_path / "compiled")
    assert len(plain) == len(compiled)
    for a, b in zip(plain, compiled):
        for key in ("loss", "logps/chosen", "logps/rejected", "eval_metrics/test/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(function, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return compiled

    monkeypatch.setattr(compiled_blocks.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled_blocks, "_KERNELS", {})
    model, _ = load_model_and_tokenizer("tiny-llama")
    hidden = torch.randn(1, 3, model.config.hidden_size)
    expected = model.model.norm(hidden)
    with caplog.at_level(logging.WARNING, logger="common.compiled_blocks"), compiled_elementwise_blocks(model):
        assert torch.equal(model.model.norm(hidden), expected)
        assert torch.equal(model.model.norm(hidden), expected)
    warnings = [r.getMessage() for r in caplog.records if "torch_compile" in r.getMessage()]
    assert warnings == ["torch_compile: compiling rms_norm failed (RuntimeError: no C++ compiler found); running it "
                        "uncompiled (same numbers, no speed-up)"]
