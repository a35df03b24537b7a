"""The persona run function on tiny models: logged values, outputs, accumulation invariance, mini-batches, errors."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from common.config import RunContext
from persona_experiments.config import PersonaConfig
from persona_experiments.data import OutputTokenError
from persona_experiments.recording import TOP_TOKENS_FILE
from persona_experiments.trainer import TENSORS_FILE, run_persona_experiment
from tests.conftest import DEMO_PERSONA_DATASET


class ListLogger:
    """Minimal metrics sink: keeps the logged records in memory."""

    def __init__(self):
        self.records = []

    def log(self, step, **scalars):
        self.records.append({"step": step, **scalars})


def _run(tmp_path, name, check_config=True, **fields):
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = PersonaConfig(**{"model": "tiny-gpt2", "dataset": DEMO_PERSONA_DATASET, "epochs": 3, "lr": 1e-3,
                              "answer_matching_behavior_to_use": "Yes", "random_seed": 1, **fields})
    assert not check_config or config.validate() == []
    logger = ListLogger()
    summary = run_persona_experiment(config, RunContext(run_dir, torch.device("cpu"), logger, 1))
    return summary, logger.records, run_dir


def test_dpo_run_logs_and_writes_outputs(tmp_path):
    summary, records, run_dir = _run(tmp_path, "dpo", log_top_token_logit_change_interval=2, num_top_tokens=4,
                                     track_logits_for_tokens=[" the"], save_finegrained_token_metrics=True,
                                     grad_entanglement_interval=1, grad_entanglement_max_examples=1)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # 3 steps + the final point
    assert records[0]["displacement/preferred_logprob_change_mean"] == 0.0
    assert "tokens/preferred_rank_by_prob_increase_mean" in records[2]  # interval 2
    assert "tokens/preferred_rank_by_prob_increase_mean" in records[1]  # a reference printer step (1, 5, 10, ...)
    assert "grad_entanglement/cosine" in records[0] and "grad_entanglement/chosen_decrease_accuracy" in records[1]
    assert "tracked/262_the/logprob" in records[0]
    # the tracker's change equals the logged log-prob difference
    change = records[-1]["logps/chosen"] - records[0]["logps/chosen"]
    assert summary["preferred_logprob_change_mean"] == pytest.approx(change, abs=1e-6)
    assert summary["num_steps"] == 3 and summary["preferred_token_texts"] == ["Yes"]
    assert summary["loss_ever_increased"] is False
    assert summary["final_loss_mean"] < math.log(2)
    assert len(summary["final_top_tokens"][0]["by_prob_increase"]) == 4
    tensors = load_file(str(run_dir / TENSORS_FILE))
    assert tensors["preferred_logprobs"].shape == (4, 1)
    assert tensors["finegrained/logprobs"].shape == (4, 1, 50257)  # top-token points at steps 0, 1, 2, 3
    assert tensors["geometry/start/inner_product"].shape == (1,)
    lines = (run_dir / TOP_TOKENS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]


def test_gradient_accumulation_gives_identical_updates(tmp_path):
    """4 prompts in one full batch vs the same batch in 3 micro-batches (sizes 2, 1, 1): same trajectory.

    lr 0.01 keeps the IPO loss at its scale (25 -> 18 -> 26): at lr 0.5 plain SGD diverges on some prompt sets
    (loss 8e5 after one step), and the float32 rounding difference of the two summation orders is then amplified
    past the relative tolerance, which measures accumulation, not divergence."""
    common = dict(num_train_samples=4, answer_matching_behavior_to_use="", objective="ipo", kl_coeff=0.1,
                  optimizer="sgd", lr=0.01, epochs=2)
    _, single, _ = _run(tmp_path, "ga1", gradient_accumulation=1, **common)
    _, accumulated, _ = _run(tmp_path, "ga3", gradient_accumulation=3, **common)
    for a, b in zip(single, accumulated):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["logps/chosen"] == pytest.approx(b["logps/chosen"], rel=1e-5)


def test_minibatch_tracks_each_epoch(tmp_path):
    """batch_size 2 of 4 prompts: 2 steps per epoch; tracked points at steps 0, 2 (epoch starts) and 4 (end)."""
    summary, records, _ = _run(tmp_path, "mb", num_train_samples=4, answer_matching_behavior_to_use="",
                               batch_size=2, epochs=2, objective="cross_entropy")
    tracked = [r["step"] for r in records if "displacement/preferred_prob_mean" in r]
    assert tracked == [0, 2, 4]
    assert summary["num_updates"] == 3 and summary["num_steps"] == 4
    assert summary["preferred_logprob_change_mean"] > 0  # SFT raises the preferred log-prob


def test_lora_chat_template_model(tmp_path):
    """tiny-llama (chat template, tied embeddings) with a fresh LoRA adapter: runs, DPO starts at ln 2."""
    summary, records, _ = _run(tmp_path, "lora", model="tiny-llama", use_lora=True, lora_rank=2, epochs=2,
                               grad_entanglement_interval=1, grad_entanglement_params="lora")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["geometry/start/inner_product"] == pytest.approx(summary["geometry/end/inner_product"])  # W frozen


def test_multi_token_output_is_a_clear_error(tmp_path):
    """Plan validation catches it for local tokenizers (tests/test_persona_plan.py); the run checks again."""
    with pytest.raises(OutputTokenError, match=r"output_tokens_matching_no.*' No thanks'"):
        _run(tmp_path, "bad", check_config=False, output_tokens_matching_no=[" No thanks"])


def test_config_validation_messages():
    assert "batch_size must be >= 1" in "\n".join(PersonaConfig(batch_size=0).validate())
    problems = PersonaConfig(gradient_accumulation=2, num_train_samples=1, optimizer="lion",
                             output_tokens_matching_yes=["No"], answer_matching_behavior_to_use="maybe",
                             objective="dpoo").validate()
    text = "\n".join(problems)
    for expected in ("gradient_accumulation 2 exceeds the batch size 1",
                     "optimizer must be one of", "appear in both", "answer_matching_behavior_to_use",
                     "unknown loss 'dpoo'"):
        assert expected in text


def test_minibatch_keys_keep_one_meaning(tmp_path):
    """4 prompts, batch 2: `logps/chosen` at every step is the mean over that step's mini-batch (rows
    torch.randperm(4, Generator().manual_seed(1)) split in pairs), the tracker's full-set mean is
    `displacement/preferred_logprob_mean`; every training record has lr and the 1-based epoch."""
    summary, records, run_dir = _run(tmp_path, "keys", num_train_samples=4, answer_matching_behavior_to_use="",
                                     batch_size=2, epochs=1, objective="cross_entropy", optimizer="sgd", lr=1e-3)
    initial = load_file(str(run_dir / TENSORS_FILE))["preferred_logprobs"][0]  # (4,) at the initial weights
    first_rows = torch.randperm(4, generator=torch.Generator().manual_seed(1))[:2]
    step0 = records[0]
    assert step0["step"] == 0 and step0["logps/chosen"] == pytest.approx(float(initial[first_rows].mean()), abs=1e-5)
    assert step0["displacement/preferred_logprob_mean"] == pytest.approx(float(initial.mean()), abs=1e-6)
    assert step0["logps/chosen"] != pytest.approx(step0["displacement/preferred_logprob_mean"], abs=1e-6)
    training = [r for r in records if "loss" in r]
    assert [r["step"] for r in training] == [0, 1]
    assert all(r["lr"] == 1e-3 and r["epoch"] == 1 for r in training)
    final = records[-1]
    assert final["step"] == 2 and "logps/chosen" not in final and "loss" not in final  # no batch after training
    assert "displacement/loss_mean" in final


def test_step_numbering_agrees_with_the_dataset_level_trainer(tmp_path):
    """Both trainers log the batch of the k-th update at step k - 1 (values measured after k - 1 updates): the
    persona run's 3 full-batch steps at 0, 1, 2 (final point 3); tests/test_preference_trainer.py checks 0..3 for
    its 4 steps with evaluations at 0, 2, 4. The first step's loss is the initial one (DPO: ln 2) in both."""
    _, records, _ = _run(tmp_path, "numbering")
    training = [r for r in records if "lr" in r]
    assert [r["step"] for r in training] == [0, 1, 2]
    assert training[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[-1]["step"] == 3 and "lr" not in records[-1]
