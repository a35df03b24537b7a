"""The paper plans follow the reference recipe, and the multi-prompt SFT stage they start with runs end to end."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.config import RunContext
from common.plan import load_plan
from persona_experiments.config import PersonaConfig
from persona_experiments.trainer import TENSORS_FILE, run_persona_experiment

PLANS_DIR = Path(__file__).resolve().parents[1] / "persona_experiments" / "experiments_plans"
SEEDS = [9773, 5290, 8767, 9818, 7596, 344, 2701, 3298, 7834, 6327]
SFT_YES = ["No", "Never", "Maybe", "Perhaps"]
SFT_NO = ["Yes", "Yeah", "Sure", "Certainly", "Absolutely"]
# plan -> {pair: (answer_matching_behavior_to_use, output_tokens_matching_yes, output_tokens_matching_no)}
PAPER_PAIRS = {
    "persona_paper_olmo1b.json": {"yes_vs_no": ("No", ["No"], ["Yes"]), "no_vs_never": ("Yes", ["No"], ["Never"])},
    "persona_paper_gemma2b.json": {"yes_vs_no": ("No", ["No"], ["Yes"]), "no_vs_never": ("Yes", ["No"], ["Never"])},
    "persona_paper_llama3_8b.json": {"yes_vs_no": ("No", ["No"], ["Yes"]), "sure_vs_yes": ("No", ["Yes"], ["Sure"])},
}


@pytest.mark.parametrize("plan_file", sorted(PAPER_PAIRS))
def test_paper_plan_is_the_reference_recipe(plan_file):
    """One SFT over all prompts (batch 32, 1 epoch, RMSprop 1e-7, the 4/5-token sets) shared by the 40 post-SFT
    runs; per pair DPO base / DPO post-SFT (beta 0.1, lr 1e-7) / IPO post-SFT (0.01, 1e-8), 101 epochs, 10 seeds."""
    runs = load_plan(PLANS_DIR / plan_file, PersonaConfig, check_input_files=False).runs  # the public file may be absent
    assert len(runs) == 61
    sft = runs[0].config
    assert runs[0].name == "sft" and sft.objective == "cross_entropy" and sft.save_model
    assert (sft.num_train_samples, sft.answer_matching_behavior_to_use, sft.batch_size, sft.epochs, sft.lr) == (
        None, "", 32, 1, 1e-7)  # the plan's -1 (reference: all prompts) is read as None
    assert sft.output_tokens_matching_yes == SFT_YES and sft.output_tokens_matching_no == SFT_NO
    post_sft = [run for run in runs[1:] if run.config.load_model_checkpoint]
    assert len(post_sft) == 40 and all(run.depends_on == ("sft",) for run in post_sft)
    for pair, (answer, yes, no) in PAPER_PAIRS[plan_file].items():
        pair_runs = [run.config for run in runs if run.name.startswith(pair + "_")]
        assert len(pair_runs) == 30
        assert sorted({c.train_samples_random_seed for c in pair_runs}) == sorted(SEEDS)
        for c in pair_runs:
            assert (c.answer_matching_behavior_to_use, c.output_tokens_matching_yes, c.output_tokens_matching_no) == (
                answer, yes, no)
            assert (c.num_train_samples, c.batch_size, c.epochs, c.optimizer, c.dtype) == (1, -1, 101, "rmsprop",
                                                                                           "float32")
            expected = (0.1, 1e-7) if c.objective == "dpo" else (0.01, 1e-8)
            assert (c.kl_coeff, c.lr) == expected


def test_smollm2_full_plan_shares_one_sft_stage():
    runs = load_plan(PLANS_DIR / "persona_smollm2_full.json", PersonaConfig, check_input_files=False).runs
    sft = [run for run in runs if run.config.objective == "cross_entropy"]
    assert [run.name for run in sft] == ["sft"]
    assert (sft[0].config.num_train_samples, sft[0].config.batch_size, sft[0].config.epochs) == (None, 32, 1)
    assert all(run.depends_on == ("sft",) for run in runs if run.config.load_model_checkpoint)


class ListLogger:
    def __init__(self):
        self.records = []

    def log(self, step, **scalars):
        self.records.append({"step": step, **scalars})


def test_multi_prompt_sft_with_token_sets(tmp_path):
    """40 prompts (20 answered Yes) in the real schema, batch 32, 1 epoch on tiny-gpt2: 2 steps (32 + 8 prompts);
    each Yes prompt's y+ is one of No/Never/Maybe/Perhaps and each No prompt's one of Yes/.../Absolutely (drawn per
    prompt, several distinct tokens); cross-entropy raises the mean preferred log-prob."""
    data = tmp_path / "persona.jsonl"
    rows = [{"question": f"Is the following statement something you would say?\n\"Statement number {i}\"",
             "answer_matching_behavior": " Yes" if i % 2 == 0 else " No"} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = PersonaConfig(model="tiny-gpt2", dataset=str(data), num_train_samples=-1, answer_matching_behavior_to_use="",
                           batch_size=32, epochs=1, objective="cross_entropy", optimizer="rmsprop", lr=1e-3,
                           output_tokens_matching_yes=SFT_YES, output_tokens_matching_no=SFT_NO, random_seed=3,
                           log_top_token_logit_change_interval=None)
    assert config.validate() == []
    run_dir = tmp_path / "sft"
    run_dir.mkdir()
    logger = ListLogger()
    summary = run_persona_experiment(config, RunContext(run_dir, torch.device("cpu"), logger, 3))
    assert summary["num_train_samples"] == 40 and summary["num_steps"] == 2
    assert [r["step"] for r in logger.records if "loss" in r] == [0, 1]
    answered_yes = summary["preferred_tokens"][0::2]  # file order: even rows are answered Yes
    answered_no = summary["preferred_tokens"][1::2]
    assert set(answered_yes) <= set(SFT_YES) and len(set(answered_yes)) > 1
    assert set(answered_no) <= set(SFT_NO) and len(set(answered_no)) > 1
    assert summary["preferred_logprob_change_mean"] > 0
    assert load_file(str(run_dir / TENSORS_FILE))["preferred_logprobs"].shape == (2, 40)  # initial and final
