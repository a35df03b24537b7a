"""TRL-named training settings of the dataset-level trainer: scheduler, clipping, optimizers, mixed precision,
gradient checkpointing, a separate reference model, intermediate checkpoints, LoRA fields."""

from __future__ import annotations

import json
import math

import pytest
import torch

from common.models import base_model_id, load_model_and_tokenizer, save_model
from common.optim import ScratchRMSprop, build_lr_scheduler, build_optimizer, warmup_step_count
from common.training_settings import MixedPrecision, clip_gradients, enable_gradient_checkpointing
from preference_training.config import PreferenceTrainingConfig
from tests.test_preference_trainer import run_training, small_config


def scheduled_rates(scheduler_type: str, steps: int, total: int, warmup_steps: int = 0,
                    warmup_ratio: float = 0.0) -> list[float]:
    """The lr of each of the first `steps` updates (base lr 1.0)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, scheduler_type, total, warmup_steps, warmup_ratio)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_linear_schedule_with_two_warmup_steps_over_ten():
    # warm-up t/2 for t < 2, then (10 - t) / (10 - 2)
    assert scheduled_rates("linear", 4, 10, warmup_steps=2) == pytest.approx([0.0, 0.5, 1.0, 0.875])


def test_cosine_and_constant_with_warmup_schedules():
    # cosine after 2 warm-up steps of 10: 0.5 (1 + cos(pi (t - 2) / 8)); t = 6 -> 0.5, t = 9 -> 0.5 (1 + cos(7 pi / 8))
    rates = scheduled_rates("cosine", 10, 10, warmup_steps=2)
    assert rates[2] == pytest.approx(1.0) and rates[6] == pytest.approx(0.5)
    assert rates[9] == pytest.approx(0.5 * (1 + math.cos(7 * math.pi / 8)))
    assert scheduled_rates("constant_with_warmup", 5, 10, warmup_steps=4) == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_warmup_ratio_rounds_up_and_warmup_steps_win():
    assert warmup_step_count(10, 0, 0.25) == 3  # ceil(2.5)
    assert warmup_step_count(10, 2, 0.25) == 2
    assert scheduled_rates("linear", 2, 10, warmup_ratio=0.25) == pytest.approx([0.0, 1 / 3])


def test_constant_schedule_is_no_scheduler_and_refuses_warmup():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_lr_scheduler(optimizer, "constant", 10) is None
    with pytest.raises(ValueError, match="'constant' has no warm-up"):
        build_lr_scheduler(optimizer, "constant", 10, warmup_steps=2)
    problems = PreferenceTrainingConfig(warmup_ratio=0.1).validate()
    assert any("'constant' has no warm-up" in p for p in problems)


def test_clipping_scales_the_gradient_to_max_norm():
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.tensor([3.0, 4.0])  # norm 5
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    norm = clip_gradients(parameter, optimizer, 1.0, MixedPrecision())
    assert norm == pytest.approx(5.0)
    # g * 1 / (5 + 1e-6)
    torch.testing.assert_close(parameter.grad, torch.tensor([0.6, 0.8]) * 5 / (5 + 1e-6))
    parameter.grad = torch.tensor([0.3, 0.4])  # norm 0.5 < 1: unchanged
    clip_gradients(parameter, optimizer, 1.0, MixedPrecision())
    torch.testing.assert_close(parameter.grad, torch.tensor([0.3, 0.4]))


def test_optimizer_choice_by_device():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(build_optimizer("rmsprop", params, 1e-3)) is ScratchRMSprop
    adamw = build_optimizer("adamw", params, 1e-3)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.0  # TRL's default
    on_cuda = build_optimizer("rmsprop", params, 1e-3, device="cuda", weight_decay=0.01)
    assert type(on_cuda) is torch.optim.RMSprop and on_cuda.param_groups[0]["foreach"] is True
    assert on_cuda.param_groups[0]["weight_decay"] == 0.01


def test_autocast_is_refused_on_cpu_and_flags_are_checked():
    with pytest.raises(ValueError, match="bf16 autocast is for CUDA devices, but this run is on cpu"):
        MixedPrecision.from_flags(True, False, torch.device("cpu"))
    assert MixedPrecision.from_flags(False, False, torch.device("cpu")).tag == ""
    problems = PreferenceTrainingConfig(bf16=True, fp16=True, dtype="bfloat16").validate()
    assert "bf16 and fp16 are both true; choose one" in problems
    assert any("set dtype to float32" in p for p in problems)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast training needs CUDA")
@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_autocast_training_keeps_float32_weights(tmp_path, flag):
    config = small_config(tmp_path, device="cuda", **{flag: True})
    result, records = run_training(config, tmp_path / "run")
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    first_loss = next(r["loss"] for r in records if "loss" in r)
    assert first_loss == pytest.approx(math.log(2), abs=1e-4)  # policy == reference (both under autocast)


def test_schedule_and_clipping_in_a_run(tmp_path):
    config = small_config(tmp_path, lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=1e-3)
    _, records = run_training(config, tmp_path / "run")
    steps = [r for r in records if "loss" in r]
    # 4 steps, 1 warm-up step: lr_t = 1e-3 * (0, 3/3, 2/3, 1/3)
    assert [r["lr"] for r in steps] == pytest.approx([0.0, 1e-3, 2e-3 / 3, 1e-3 / 3])
    assert all(r["grad_norm"] > 0 for r in steps)


def test_gradient_checkpointing_changes_no_number(tmp_path, monkeypatch):
    import preference_training.trainer as trainer

    enabled = []

    def recording_enable(model):
        enable_gradient_checkpointing(model)
        enabled.append((model.is_activation_checkpointing, model.training))

    monkeypatch.setattr(trainer, "enable_gradient_checkpointing", recording_enable)
    _, plain = run_training(small_config(tmp_path, model="tiny-llama"), tmp_path / "plain")
    result, checkpointed = run_training(small_config(tmp_path, model="tiny-llama", gradient_checkpointing=True),
                                        tmp_path / "checkpointed")
    assert enabled == [(True, True)]  # checkpointing needs training mode (dropout is off)
    assert not result.model.training and not result.model.is_activation_checkpointing  # returned in eval mode
    for a, b in zip(plain, checkpointed):
        for key in ("loss", "logps/chosen", "eval_metrics/test/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_separate_reference_model_changes_the_reference_logps(tmp_path):
    _, same = run_training(small_config(tmp_path, epochs=1), tmp_path / "same")
    _, other = run_training(small_config(tmp_path, epochs=1, ref_model="tiny-llama"), tmp_path / "other")
    first_loss = [next(r["loss"] for r in records if "loss" in r) for records in (same, other)]
    assert first_loss[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert abs(first_loss[1] - math.log(2)) > 1e-3  # the reference is another model
    initial = [r for r in other if "eval_metrics/train/preferred_logprobs_mean" in r][0]
    reference = [r for r in same if "eval_metrics/train/preferred_logprobs_mean" in r][0]
    # step 0 is measured on the policy (not copied from the reference log-probs): the same policy mean
    assert initial["eval_metrics/train/preferred_logprobs_mean"] == pytest.approx(
        reference["eval_metrics/train/preferred_logprobs_mean"], rel=1e-6)
    assert initial["eval_metrics/train/preferred_logprobs_change_mean"] != 0.0  # vs ref_model


def test_intermediate_checkpoints_are_written(tmp_path):
    config = small_config(tmp_path, save_steps=2, save_every_epochs=1)
    run_training(config, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["epoch_1", "epoch_2", "step_2", "step_4"]
    reloaded, _ = load_model_and_tokenizer("tiny-gpt2", checkpoint=str(tmp_path / "run" / "checkpoints" / "step_4"))
    assert reloaded.config.model_type == "gpt2"


def test_lora_fields_reach_peft_and_the_base_model_id_is_recorded(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-llama", use_lora=True, lora_rank=4, lora_alpha=16.0,
                                                lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.05)
    peft_config = model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (4, 16.0, 0.05)
    assert peft_config.target_modules == {"q_proj", "v_proj"}
    save_model(model, tokenizer, tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"
    assert base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    default = load_model_and_tokenizer("tiny-llama", use_lora=True, lora_rank=4)[0].peft_config["default"]
    assert (default.lora_alpha, default.lora_dropout) == (8, 0.0)  # 2 r, as before


def test_lora_fields_in_a_training_run(tmp_path):
    config = small_config(tmp_path, epochs=1, use_lora=True, lora_rank=2, lora_alpha=8.0,
                          lora_target_modules=["c_attn"], save_model=True, gradient_checkpointing=True)
    result, records = run_training(config, tmp_path / "run")
    assert result.model.peft_config["default"].lora_alpha == 8.0
    lora_b = [p for name, p in result.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # adapters trained (B starts at 0) with checkpointing
    adapter_config = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-gpt2" and adapter_config["r"] == 2


def test_reloaded_adapter_records_the_base_model_name(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-llama", use_lora=True, lora_rank=2)
    model.peft_config["default"].base_model_name_or_path = "/some/cache/path"  # as adapters saved before did
    save_model(model, tokenizer, tmp_path / "old")
    reloaded, _ = load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "old"), is_lora_checkpoint=True)
    save_model(reloaded, tokenizer, tmp_path / "new")
    adapter_config = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"


def test_cuda_rmsprop_path_matches_scratch_rmsprop_numbers():
    """The foreach RMSprop used on CUDA and ScratchRMSprop (CPU) give the same updates (run here on CPU tensors)."""
    torch.manual_seed(0)
    initial, gradients = torch.randn(5, 3), [torch.randn(5, 3) for _ in range(3)]
    results = []
    for device in (None, "cuda"):
        parameter = torch.nn.Parameter(initial.clone())
        optimizer = build_optimizer("rmsprop", [parameter], 1e-2, device=device)
        for gradient in gradients:
            parameter.grad = gradient.clone()
            optimizer.step()
        results.append(parameter.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0], initial)
