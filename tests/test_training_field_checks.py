"""common/training_field_checks.py: the model and optimizer checks both configs share (one message each)."""

from types import SimpleNamespace

import pytest

from common.training_field_checks import model_field_problems, optimizer_field_problems
from persona_experiments.config import PersonaConfig
from preference_training.config import PreferenceTrainingConfig


def fields(**overrides) -> SimpleNamespace:
    good = dict(model="tiny-gpt2", load_model_checkpoint=None, is_lora_checkpoint=False, lora_rank=8,
                dtype="float32", optimizer="adam", lr=1e-3, epochs=1)
    return SimpleNamespace(**{**good, **overrides})


def test_good_fields_have_no_problem():
    assert model_field_problems(fields()) == [] and optimizer_field_problems(fields()) == []


def test_each_bad_field_is_named_once():
    assert model_field_problems(fields(model="", is_lora_checkpoint=True, lora_rank=0, dtype="int8")) == [
        "model must name a model (built-in name, Hub id or directory), got ''",
        "is_lora_checkpoint is true but load_model_checkpoint is empty; set the adapter directory",
        "lora_rank must be >= 1, got 0",
        "dtype must be one of ('float32', 'bfloat16', 'float16'), got 'int8'"]
    assert optimizer_field_problems(fields(optimizer="lion", lr=0.0, epochs=0)) == [
        "optimizer must be one of ['adam', 'adamw', 'rmsprop', 'sgd'], got 'lion'",
        "lr must be > 0, got 0.0", "epochs must be >= 1, got 0"]


@pytest.mark.parametrize("config_cls", [PersonaConfig, PreferenceTrainingConfig])
def test_both_configs_report_the_shared_messages(config_cls):
    config = config_cls(lora_rank=0, lr=-1.0)
    problems = config.validate()
    assert "lora_rank must be >= 1, got 0" in problems and "lr must be > 0, got -1.0" in problems
