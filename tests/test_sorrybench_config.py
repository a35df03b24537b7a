"""Tests for SorryBenchConfig validation (precision guard, refusal settings), the shipped plans, and the bfloat16
rounding that makes pure low-precision training with a plain optimizer a bad default."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from common.optim import build_optimizer, low_precision_training_problem
from common.plan import load_plan
from sorrybench.experiment import SorryBenchConfig

PLANS_DIR = Path(__file__).resolve().parents[1] / "sorrybench" / "experiments_plans"


def test_bfloat16_rmsprop_first_step_rounds_away():
    """RMSprop step 1 (alpha 0.99): v = 0.01 g^2, update = lr g / sqrt(v) = 10 lr = 5e-5 at lr 5e-6. bfloat16 values
    near 0.02 are 2^-6 * 2^-7 = 1.22e-4 apart, so 0.02 - 5e-5 rounds back to the same number; float32 moves."""
    for dtype, changes in ((torch.bfloat16, False), (torch.float32, True)):
        weight = torch.nn.Parameter(torch.tensor([0.02], dtype=dtype))
        before = weight.detach().clone()
        weight.grad = torch.tensor([1.0], dtype=dtype)
        build_optimizer("rmsprop", [weight], lr=5e-6).step()
        assert bool((weight.detach() != before).any()) is changes
    spacing = torch.finfo(torch.bfloat16).eps * 2 ** -6  # ulp in [2^-6, 2^-5), where 0.02 lies
    assert spacing == pytest.approx(1.22e-4, rel=1e-2) and 5e-5 < spacing / 2


def test_low_precision_guard():
    assert low_precision_training_problem("float32", "rmsprop", 5e-6) is None
    assert "allow_low_precision_training" in low_precision_training_problem("bfloat16", "rmsprop", 5e-6)
    problems = SorryBenchConfig(dtype="bfloat16").validate()
    assert len(problems) == 1 and problems[0].startswith("dtype bfloat16 with optimizer rmsprop")
    assert SorryBenchConfig(dtype="bfloat16", allow_low_precision_training=True).validate() == []


def test_config_validation_names_the_field():
    problems = SorryBenchConfig(eval_dataset=None, refusal_judge="gpt4", refusal_num_responses=2,
                                refusal_temperature=0.0).validate()
    text = "\n".join(problems)
    assert "eval_dataset is empty" in text
    assert "refusal_judge must be one of" in text and "identical responses" in text
    assert not SorryBenchConfig().validate()
    assert not SorryBenchConfig(train_pair_types=["refusal-refusal", "compliance-refusal"]).validate()
    for bad in (["refusal_refusal"], []):
        (problem,) = SorryBenchConfig(train_pair_types=bad).validate()
        assert problem.startswith("train_pair_types: ") and "e.g. ['refusal-refusal']" in problem
    wrong_format = SorryBenchConfig(dataset_format="ultrafeedback").validate()
    assert Counter(p.split(" ")[0] for p in wrong_format)["dataset_format"] == 1


def test_refusal_defaults_are_the_reference_sampling():
    config = SorryBenchConfig()
    settings = config.refusal_generation_settings()
    assert (settings.temperature, settings.top_p, settings.max_new_tokens, settings.num_responses) == (0.7, 1.0, 512, 1)
    assert config.dataset == "data_files/sorrybench/smollm2-135m-instruct/train.jsonl"


@pytest.mark.parametrize("plan_name", ["smollm2_cpu.json", "gemma2b_it_paper.json", "llama3_8b_instruct_paper.json"])
def test_shipped_plans_validate(plan_name):
    plan = load_plan(PLANS_DIR / plan_name, SorryBenchConfig, check_input_files=False)  # inputs come from the data set script
    assert len(plan.runs) == 8
    configs = [run.config for run in plan.runs]
    assert {c.objective for c in configs} == {"dpo", "ipo"}
    filtered = [c for c in configs if c.similarity_results_path]
    assert len(filtered) == 2 and all(c.pref_similarity_measure == "ln_ches_scores" for c in filtered)
    assert sum(c.use_gold_preferences for c in configs) == 2
    assert all(c.refusal_temperature == 0.7 and c.dtype == "float32" for c in configs)
    if "paper" in plan_name:
        assert all(c.refusal_max_new_tokens == 512 and c.refusal_judge == "hf_judge" for c in configs)
