"""Dataset-level trainer: fast log-probs == naive full-logits gather, accumulation equivalence, a full run.

Run: python -m pytest tests/test_preference_trainer.py -x -q
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.config import RunContext
from common.distributed import ProcessGroup
from common.losses import PreferenceLogps, compute_preference_loss
from common.metrics_logger import MetricsLogger
from common.models import load_model_and_tokenizer
from common.preference_data import TokenizationOptions, TokenizedPair, load_preference_examples, tokenize_pair
from common.sequence_logprobs import batch_logps_padded, packed_pair_inputs, pair_logps
from common.tracker import DisplacementTracker
from preference_training.config import PreferenceTrainingConfig
from preference_training.evaluation import distribution_statistics, split_eval_metrics
from preference_training.logprobs import LogpsOptions
from preference_training.trainer import TrainingSplit, _step_batches, accumulate_step_gradients, train_preference_model
from tests.conftest import assert_close_at_precision, real_data

ROOT = Path(__file__).resolve().parents[1]
ULTRAFEEDBACK_TRAIN, ULTRAFEEDBACK_EVAL = "ultrafeedback/train_1000.jsonl", "ultrafeedback/eval_200.jsonl"


def real_pairs(tokenizer, count: int, max_input_length: int = 40) -> list[TokenizedPair]:
    """`count` UltraFeedback pairs, truncated so prompts and responses are short, plus one 1-token prompt."""
    examples = load_preference_examples(str(real_data(ULTRAFEEDBACK_TRAIN)), "ultrafeedback", num_samples=count, seed=1)
    keep_response = TokenizationOptions(truncation="keep_response")  # short pairs out of long ones (prompt cut)
    pairs = [tokenize_pair(tokenizer, example, max_input_length, keep_response) for example in examples]
    assert all(isinstance(p, TokenizedPair) for p in pairs)
    return pairs[:-1] + [TokenizedPair([pairs[-1].prompt_ids[-1]], [5, 6, 7], [8], pairs[-1].source_index)]


def naive_logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The textbook computation: full forward, full-sequence log-softmax, gather the response tokens."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return log_probs[positions, torch.tensor(response)].sum()


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_fast_logps_equal_naive_full_forward_gather(model_name):
    model, tokenizer = load_model_and_tokenizer(model_name)
    model.eval()
    pairs = real_pairs(tokenizer, 4)
    with torch.no_grad():
        expected = torch.tensor([[naive_logp(model, p.prompt_ids, p.chosen_ids),
                                  naive_logp(model, p.prompt_ids, p.rejected_ids)] for p in pairs])
        for kwargs in ({"share_prompt": True}, {"share_prompt": False}, {"keep_logits": False}):
            got = torch.tensor([[float(v) for v in pair_logps(model, p, **kwargs)] for p in pairs])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"pair_logps {kwargs}")
        for keep_logits in (True, False):
            chosen, rejected = batch_logps_padded(model, pairs, tokenizer.pad_token_id, keep_logits=keep_logits)
            torch.testing.assert_close(torch.stack([chosen, rejected], 1), expected, rtol=1e-5, atol=1e-5)


def test_packed_pair_inputs_layout_by_hand():
    """Prompt [10, 11, 12], chosen [20, 21], rejected [30]: segments [10, 11] | [12, 20] | [12]."""
    input_ids, position_ids, mask, first = packed_pair_inputs(TokenizedPair([10, 11, 12], [20, 21], [30], 0),
                                                              torch.float32)
    assert input_ids.tolist() == [[10, 11, 12, 20, 12]] and position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert first == 2 and mask.shape == (1, 1, 5, 5)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 1]]  # the rejected branch sees the prompt prefix and itself only
    assert mask[0, 0, 4, 2] == torch.finfo(torch.float32).min


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
def test_shared_prompt_gradients_equal_naive_gradients(model_name):
    """Gradients through the packed prompt + both responses: d(c - 2r)/dtheta matches the naive one."""
    model, tokenizer = load_model_and_tokenizer(model_name)
    model.eval()
    pair = real_pairs(tokenizer, 2)[0]
    grads = []
    for compute in (lambda: pair_logps(model, pair, share_prompt=True),
                    lambda: (naive_logp(model, pair.prompt_ids, pair.chosen_ids),
                             naive_logp(model, pair.prompt_ids, pair.rejected_ids))):
        model.zero_grad()
        chosen, rejected = compute()
        (chosen - 2 * rejected).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert_close_at_precision(grads[0], grads[1])  # float32: tolerance from its eps and the gradient's size


def float64_model(name: str):
    """A built-in model in float64, so equivalence tests compare the maths, not float32 rounding."""
    model, tokenizer = load_model_and_tokenizer(name)
    return model.double().eval(), tokenizer


def make_split(model, pairs: list[TokenizedPair]) -> TrainingSplit:
    """A training split whose reference log-probs are the initial ones shifted by fixed offsets (so the
    margins differ between examples)."""
    with torch.no_grad():
        chosen, rejected = LogpsOptions().logps(model, pairs)
    offsets = torch.linspace(-3.0, 3.0, len(pairs))
    return TrainingSplit("train", pairs, chosen + offsets, rejected - offsets, DisplacementTracker(len(pairs)))


def sgd_step_parameters(model_name: str, accumulate) -> torch.Tensor:
    """Parameters after one SGD step (lr 1) of the gradient that `accumulate(model)` leaves in .grad."""
    model, _ = float64_model(model_name)
    accumulate(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= parameter.grad
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("model_name, tolerance", [("tiny-gpt2", 1e-9), ("tiny-llama", 1e-6)])
def test_accumulation_matches_batch_update(model_name, tolerance):
    """One step on 8 pairs: padding-free per-pair backward (shared prompts), padded micro-batches of 8 and of 1
    (batch 1 x 8 accumulation), and a naive batch-8 full-logits update give the same parameters.

    Float64 models, so the comparison is of the maths: GPT-2 agrees to 1e-9. Llama's RMSNorm computes in
    float32 even in a float64 model, and a shared prompt sums the two responses' gradients before that
    float32 step, so Llama agrees to float32 rounding (observed ~1e-8 of gradients ~1)."""
    model, tokenizer = float64_model(model_name)
    pairs = real_pairs(tokenizer, 8, max_input_length=24)
    split = make_split(model, pairs)
    group = ProcessGroup(torch.device("cpu"))
    positions = list(range(len(pairs)))

    def naive_batch_update(net):
        chosen = torch.stack([naive_logp(net, p.prompt_ids, p.chosen_ids) for p in pairs])
        rejected = torch.stack([naive_logp(net, p.prompt_ids, p.rejected_ids) for p in pairs])
        config = PreferenceTrainingConfig(kl_coeff=0.5)
        lengths = torch.ones(len(pairs))
        logps = PreferenceLogps(chosen, rejected, split.reference_chosen, split.reference_rejected, lengths, lengths)
        compute_preference_loss(config, logps).losses.mean().backward()

    def ours(padding_free: bool, accumulation: int):
        config = PreferenceTrainingConfig(kl_coeff=0.5, batch_size=8, gradient_accumulation=accumulation,
                                          padding_free=padding_free)
        options = LogpsOptions(padding_free, True, 8 // accumulation, tokenizer.pad_token_id, True)
        return lambda net: accumulate_step_gradients(net, split, positions, 1 / 8, config, options, group)

    expected = sgd_step_parameters(model_name, naive_batch_update)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (expected - initial).abs().max() > 1e-2  # the step moves the parameters
    for padding_free, accumulation in ((True, 1), (False, 1), (False, 8)):
        got = sgd_step_parameters(model_name, ours(padding_free, accumulation))
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance,
                                   msg=f"padding_free={padding_free}, gradient_accumulation={accumulation}")


def test_step_batches_drop_only_partial_batches_smaller_than_world_size():
    order = list(range(10))
    assert _step_batches(order, 4, 1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _step_batches(order, 4, 2) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _step_batches(order, 4, 3) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_distribution_statistics_hand_computed():
    """[1, 2, 3, 4]: mean 2.5; population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; linear quantiles at
    rank q * 3: q25 -> 1.75, median -> 2.5, q75 -> 3.25, q10 -> 1.3, q90 -> 3.7."""
    stats = distribution_statistics(torch.tensor([4.0, 1.0, 3.0, 2.0]))
    expected = {"mean": 2.5, "std": math.sqrt(1.25), "min": 1.0, "q10": 1.3, "q25": 1.75, "median": 2.5,
                "q75": 3.25, "q90": 3.7, "max": 4.0}
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, abs=1e-12), key


def test_split_eval_metrics_hand_computed():
    """Changes d+ = (1, -1), d- = (-2, 0): preferred mean 0, one of two fell; dispreferred mean -1.
    DPO (beta 1) margins h = (1 + 2, -1 - 0) = (3, -1): loss mean = (log(1 + e^-3) + log(1 + e^1)) / 2
    = (0.048587 + 1.313262) / 2 = 0.680924; reward accuracy 1/2."""
    reference = torch.tensor([-10.0, -20.0])
    metrics = split_eval_metrics("train", reference + torch.tensor([1.0, -1.0]), reference + torch.tensor([-2.0, 0.0]),
                                 reference, reference, torch.tensor([3, 4]), torch.tensor([2, 5]),
                                 PreferenceTrainingConfig(kl_coeff=1.0))
    assert metrics["eval_metrics/train/preferred_logprobs_change_mean"] == pytest.approx(0.0)
    assert metrics["eval_metrics/train/frac_preferred_logprobs_decreased"] == 0.5
    assert metrics["eval_metrics/train/dispreferred_logprobs_change_mean"] == pytest.approx(-1.0)
    assert metrics["eval_metrics/train/frac_dispreferred_logprobs_decreased"] == 0.5
    assert metrics["eval_metrics/train/preferred_logprobs_mean"] == pytest.approx(-15.0)
    assert metrics["eval_metrics/train/loss"] == pytest.approx(0.680924, abs=1e-6)
    assert metrics["eval_metrics/train/rewards_accuracy"] == 0.5


def test_config_validation_names_the_fields():
    problems = PreferenceTrainingConfig(batch_size=10, gradient_accumulation=4, quantile=0.5,
                                        pref_similarity_measure="ches", eval_every=0).validate()
    text = "\n".join(problems)
    for needle in ("gradient_accumulation", "pref_similarity_measure", "quantile=0.5 needs preference_num_samples",
                   "eval_every"):
        assert needle in text
    assert PreferenceTrainingConfig().validate() == []
    assert "similarity_results_path" in "\n".join(PreferenceTrainingConfig(preference_num_samples=4).validate())


def small_config(tmp_path: Path, **overrides) -> PreferenceTrainingConfig:
    fields = dict(model="tiny-gpt2", dataset=str(real_data(ULTRAFEEDBACK_TRAIN)),
                  eval_dataset=str(real_data(ULTRAFEEDBACK_EVAL)), num_train_samples=6, num_eval_samples=3,
                  max_input_length=32, truncation="keep_response", batch_size=3, epochs=2,
                  optimizer="adam", lr=1e-3, outputs_dir=str(tmp_path / "outputs"), random_seed=0)
    fields.update(overrides)
    config = PreferenceTrainingConfig(**fields)
    assert config.validate() == []
    return config


def run_training(config: PreferenceTrainingConfig, run_dir: Path):
    from preference_training.selection import select_examples

    run_dir.mkdir(parents=True)
    logger = MetricsLogger(run_dir)
    selected = select_examples(config)
    result = train_preference_model(config, selected.train, selected.eval, RunContext(run_dir, torch.device("cpu"),
                                                                                      logger, config.random_seed))
    logger.close()
    return result, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_preference_model_end_to_end(tmp_path):
    """First step's DPO loss is ln 2 = 0.693147 (policy == reference), parameters change, eval files are written,
    the saved model reloads, and grad-entanglement diagnostics are logged when enabled."""
    config = small_config(tmp_path, save_model=True, grad_entanglement_interval=1, grad_entanglement_max_examples=2)
    run_dir = tmp_path / "run"
    result, records = run_training(config, run_dir)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]  # step s = measured after s updates (as the persona trainer)
    assert all(r["lr"] == config.lr for r in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "lr", "grad_entanglement/cosine", "grad_entanglement/chosen_decrease_accuracy"):
        assert key in steps[0], key
    evals = [json.loads(line) for line in (run_dir / "eval_metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"]) for e in evals] == [(0, 0), (2, 1), (4, 2)]
    assert evals[0]["eval_metrics/train/preferred_logprobs_change_mean"] == 0.0
    assert evals[0]["eval_metrics/test/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert evals[-1]["eval_metrics/train/preferred_logprobs_change_mean"] != 0.0
    summary = result.summary
    assert summary["num_train_pairs"] == 6 and summary["num_test_pairs"] == 3 and summary["num_steps"] == 4
    assert summary["tracker/train/num_updates"] == 3
    assert summary["eval_metrics/train/preferred_logprobs_change_mean"] == evals[-1][
        "eval_metrics/train/preferred_logprobs_change_mean"]
    tensors = load_file(str(run_dir / "displacement_train.safetensors"))
    assert tensors["preferred_logprobs"].shape == (3, 6)
    initial, _ = load_model_and_tokenizer("tiny-gpt2")
    reloaded, _ = load_model_and_tokenizer("tiny-gpt2", checkpoint=str(run_dir / "model"))
    changed = [not torch.equal(a, b) for a, b in zip(initial.parameters(), result.model.parameters())]
    assert all(changed)
    for trained, saved in zip(result.model.state_dict().values(), reloaded.state_dict().values()):
        torch.testing.assert_close(trained, saved)


def test_two_processes_match_one_process(tmp_path):
    """`torchrun --nproc_per_node 2` (DDP over gloo through accelerate) gives the loss trajectory of one process
    with the same batch size (to 1e-5); only rank 0 logs (the worker's other ranks would raise)."""
    from tests.preference_ddp_worker import run_worker

    real_data(ULTRAFEEDBACK_TRAIN), real_data(ULTRAFEEDBACK_EVAL)  # the worker reads them by their conventional names
    run_worker(tmp_path / "single")
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", "29517", str(ROOT / "tests" / "preference_ddp_worker.py"),
                               str(tmp_path / "ddp")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "losses.json").read_text())
    two = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"] == pytest.approx(two["losses"], abs=1e-5)
    assert one["final_preferred_change"] == pytest.approx(two["final_preferred_change"], abs=1e-4)
