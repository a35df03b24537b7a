"""The displacement callback inside real TRL DPOTrainer runs (tiny-gpt2, CPU), and the example script end to end."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from common.models import load_model_and_tokenizer
from common.preference_data import TokenizedPair
from common.sequence_logprobs import pair_logps
from examples.trl_dpo_with_displacement_tracking import main as example_main
from integrations import DisplacementCallback, format_displacement_table, probe_logps, probe_pairs, track_displacement
from integrations.trl_probe import pair_as_trained
from tests.conftest import real_data

ULTRAFEEDBACK = "ultrafeedback/train_1000.jsonl"  # real data: the tests skip, with the reason, where it is absent
MAX_LENGTH = 96  # keeps rows 0, 3, 4, 5, 7 of the first 8 (TRL drops prompts of >= max_length tokens)
NUM_PROBE = 4


def ultrafeedback(num_rows: int) -> Dataset:
    rows = Dataset.from_json(str(real_data(ULTRAFEEDBACK)))
    return rows.select(range(num_rows)).select_columns(["prompt", "chosen", "rejected"])


def dpo_trainer(tmp_path, train: Dataset, **config) -> DPOTrainer:
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3,
                     max_length=MAX_LENGTH, logging_steps=1, precompute_ref_log_probs=True, report_to="none",
                     save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, **config)
    return DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 3-step DPO run on 8 UltraFeedback pairs, the first 4 as the probe, measured every 2 steps."""
    tmp_path = tmp_path_factory.mktemp("trl_run")
    trainer = dpo_trainer(tmp_path, ultrafeedback(8), max_steps=3)
    callback = track_displacement(trainer, list(range(NUM_PROBE)), every_n_steps=2, grad_entanglement=True,
                                  top_tokens=3, top_token_examples=2)
    trainer.train()
    return trainer, callback


def test_probe_logps_equal_sequence_logprobs_and_trl_reference(trained):
    """Step 0 = TRL's own precomputed reference log-probs (fused LM head, independent code); the last step = our
    `pair_logps` on the trained weights, over the ids TRL trains on (prompt + response, cut at max_length)."""
    trainer, callback = trained
    history = callback.tracker.history()
    assert history["steps"].tolist() == [0, 2, 3]
    rows = trainer.train_dataset.select(range(NUM_PROBE))
    torch.testing.assert_close(history["preferred_logprobs"][0], torch.tensor(rows["ref_chosen_logps"]).double(),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(history["dispreferred_logprobs"][0],
                               torch.tensor(rows["ref_rejected_logps"]).double(), rtol=1e-5, atol=1e-4)
    model = trainer.model.eval()
    for n, row in enumerate(rows):
        prompt = row["prompt_ids"]
        keep = MAX_LENGTH - len(prompt)  # keep_start truncation of prompt + response
        pair = TokenizedPair(prompt, row["chosen_ids"][:keep], row["rejected_ids"][:keep], n)
        with torch.no_grad():
            chosen, rejected = pair_logps(model, pair)
        assert abs(float(chosen) - float(history["preferred_logprobs"][-1, n])) <= 1e-5
        assert abs(float(rejected) - float(history["dispreferred_logprobs"][-1, n])) <= 1e-5
    assert not torch.equal(history["preferred_logprobs"][0], history["preferred_logprobs"][-1])  # training moved them


def test_logs_reach_trainer_history_without_dropping_trl_logs(trained):
    trainer, _ = trained
    probe_steps = [e["step"] for e in trainer.state.log_history if "probe/displacement/preferred_logprob_mean" in e]
    loss_steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert probe_steps == [0, 2, 3]
    assert loss_steps == [1, 2, 3]  # the callback's own log does not cancel TRL's (should_log restored)
    entry = next(e for e in trainer.state.log_history
                 if e.get("step") == 2 and "probe/displacement/preferred_logprob_mean" in e)
    assert "probe/displacement/frac_preferred_fell_since_init" in entry
    assert "probe/grad_entanglement/cosine" in entry
    assert "probe/grad_entanglement/chosen_decrease_accuracy" in entry  # scored against step 0's predictions


def test_run_directory_layout(trained):
    trainer, callback = trained
    run_dir = callback.output_dir
    config = json.loads((run_dir / "config.json").read_text())
    assert config["trainer"] == "DPOTrainer" and config["callback"]["num_probe_pairs"] == NUM_PROBE
    assert config["training_args"]["max_steps"] == 3
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["measured_steps"] == [0, 2, 3]
    assert summary["tracker/probe/num_examples"] == NUM_PROBE
    tensors = load_file(str(run_dir / "displacement_probe.safetensors"))
    assert tensors["preferred_logprobs"].shape == (3, NUM_PROBE)
    top = [json.loads(line) for line in (run_dir / "top_tokens.jsonl").read_text().splitlines()]
    assert len(top) == 3 and len(top[-1]["examples"]) == 2 and len(top[-1]["examples"][0]["by_prob_increase"]) == 3
    assert (run_dir / "plots").is_dir() and any((run_dir / "plots").iterdir())
    table = format_displacement_table(callback.records).splitlines()
    assert len(table) == 4 and table[0].split()[0] == "step" and table[1].split()[0] == "0"
    assert "nan" not in " ".join(table)  # every column is a key the tracker logs


def test_raw_dataset_probe_is_tokenised_like_the_training_rows(tmp_path):
    """A probe given as raw rows goes through the trainer's own preprocessing: same ids as the training rows.
    Raw rows 0, 3, 4 are training rows 0, 1, 2 (TRL dropped raw rows 1 and 2: prompts of >= 96 tokens)."""
    train = ultrafeedback(8)
    trainer = dpo_trainer(tmp_path, train, max_steps=1)
    assert probe_pairs(trainer, train.select([0, 3, 4])) == probe_pairs(trainer, [0, 1, 2])
    assert len(probe_pairs(trainer, train.select(range(3)))) == 1
    pair = probe_pairs(trainer, [0])[0]
    assert len(pair.prompt_ids) + len(pair.chosen_ids) <= MAX_LENGTH


def test_pair_as_trained_applies_the_collator_truncation():
    """max_length 5, keep_start: prompt [1, 2, 3] + chosen [4, 5, 6] -> [1, 2, 3, 4, 5]; rejected [7] is kept."""
    collator = DataCollatorForPreference(pad_token_id=0, max_length=5)
    pair = pair_as_trained(collator, [1, 2, 3], [4, 5, 6], [7], source_index=9)
    assert pair == TokenizedPair([1, 2, 3], [4, 5], [7], 9)
    with pytest.raises(ValueError, match="different prompts"):
        pair_as_trained(DataCollatorForPreference(pad_token_id=0, max_length=4, truncation_mode="keep_end"),
                        [1, 2, 3], [4, 5, 6], [7], source_index=0)


def test_plain_transformers_trainer_with_a_tokenised_probe(tmp_path):
    """A plain transformers.Trainer (language modelling) with a probe given as token ids."""
    from transformers import Trainer, TrainingArguments

    model, _ = load_model_and_tokenizer("tiny-gpt2")
    ids = [[464, 3290, 318, 4171, 13]] * 4
    train = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train)
    probe = Dataset.from_dict({"prompt_ids": [[464, 3290], [40]], "chosen_ids": [[318, 4171], [588]],
                               "rejected_ids": [[318, 2266, 13], [17]]})
    callback = track_displacement(trainer, probe, every_n_steps=1, save_plots=False)
    trainer.train()
    assert [record["step"] for record in callback.records] == [0, 1, 2]
    with torch.no_grad():
        expected = [pair_logps(model.eval(), pair) for pair in callback.pairs]
    final = callback.tracker.history()
    for n, (chosen, rejected) in enumerate(expected):
        assert abs(float(chosen) - float(final["preferred_logprobs"][-1, n])) <= 1e-5
        assert abs(float(rejected) - float(final["dispreferred_logprobs"][-1, n])) <= 1e-5
    assert callback.pairs[0] == TokenizedPair([464, 3290], [318, 4171], [318, 2266, 13], 0)


def test_padded_batches_equal_pair_at_a_time():
    model, _ = load_model_and_tokenizer("tiny-gpt2")
    pairs = [TokenizedPair([464, 3290], [318, 4171], [318, 2266, 13], 0), TokenizedPair([40], [588, 13], [17], 1),
             TokenizedPair([1, 2, 3], [4], [5, 6], 2)]
    with torch.no_grad():
        one = probe_logps(model.eval(), pairs, batch_size=1)
        padded = probe_logps(model, pairs, batch_size=2, pad_token_id=50256)
    for a, b in zip(one, padded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_first_response_logprobs_equal_a_full_forward():
    from integrations.trl_callback import first_response_logprobs

    model, _ = load_model_and_tokenizer("tiny-gpt2")
    pairs = [TokenizedPair([464, 3290], [318], [17], 0), TokenizedPair([40], [588], [17], 1)]
    with torch.no_grad():
        got = first_response_logprobs(model.eval(), pairs)
        expected = torch.stack([torch.log_softmax(model(input_ids=torch.tensor([p.prompt_ids])).logits[0, -1], -1)
                                for p in pairs])
    assert got.shape == (2, 50257)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(tmp_path):
    trainer = dpo_trainer(tmp_path, ultrafeedback(8), max_steps=1)
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        DisplacementCallback(trainer, [0], every_n_steps=0)
    with pytest.raises(ValueError, match=r"row indices must be .* \[0, 5\)"):
        DisplacementCallback(trainer, [0, 7])
    with pytest.raises(ValueError, match="grad_entanglement_params"):
        DisplacementCallback(trainer, [0], grad_entanglement_params="everything")


@pytest.mark.parametrize("reference", ["precompute", "model"])
def test_example_runs_end_to_end(tmp_path, capsys, reference):
    run_dir = example_main(["--dataset", str(real_data(ULTRAFEEDBACK)), "--num_pairs", "8", "--probe_pairs", "4", "--max_steps", "2", "--max_length", "96",
                            "--reference", reference, "--output_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "displaced" in printed and str(run_dir) in printed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["measured_steps"] == [0, 1, 2]


def test_overhead_benchmark_runs_on_a_tiny_model():
    from bench.bench_trl_callback import main as bench_main

    text = bench_main(["--model", "tiny-gpt2", "--dataset", str(real_data(ULTRAFEEDBACK)), "--steps", "1", "--batch_size", "2", "--probe_pairs", "2",
                       "--max_length", "96", "--every_n_steps", "10", "--no_write"])
    assert "overhead = measurement / (10 x step)" in text and "in CPU seconds" in text and "probe 2 pairs" in text


def test_printer_reads_the_run_directory(trained, tmp_path, capsys):
    from integrations.print_displacement import main as print_main

    _, callback = trained
    assert print_main([str(callback.output_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["step", "logp(y+)"] and [line.split()[0] for line in lines[1:4]] == ["0", "2", "3"]
    model = json.loads((callback.output_dir / "config.json").read_text())["model"]
    assert lines[4] == f"{NUM_PROBE} probe pairs, DPOTrainer, model {model}"
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("")
    assert print_main([str(tmp_path)]) == 2
    assert "not a displacement-callback run" in capsys.readouterr().err
