"""End-to-end tests of compute_preference_similarity_per_example.py on tiny-gpt2 with real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ches.ches import LENGTH_NAMES, MEASURE_NAMES, compute_pair_measures, load_similarity_results
from common.models import load_model_and_tokenizer
from common.preference_data import load_preference_examples, tokenize_pair
from compute_preference_similarity_per_example import main

from tests.conftest import real_data


@pytest.fixture
def ultrafeedback() -> str:
    """The real UltraFeedback sample (the test skips without it)."""
    return str(real_data("ultrafeedback/train_1000.jsonl"))


def run(tmp_path: Path, dataset: str, dataset_format: str, *extra: str) -> Path:
    return main(["--model", "tiny-gpt2", "--dataset", dataset, "--dataset_format", dataset_format,
                 "--max_input_length", "64", "--batch_size", "2", "--output_dir", str(tmp_path),
                 "--device", "cpu", *extra])


@pytest.mark.parametrize("data_name, dataset_format", [("ultrafeedback/train_1000.jsonl", "ultrafeedback"),
                                                       ("hh_rlhf/harmless_base_test.jsonl.gz", "hh_rlhf")])
def test_end_to_end_matches_library(tmp_path, data_name, dataset_format):
    dataset = str(real_data(data_name))
    path = run(tmp_path, dataset, dataset_format, "--num_samples", "4", "--seed", "1")
    dataset_name = f"{Path(dataset).parent.name}-{Path(dataset).name.split('.')[0]}"  # e.g. ultrafeedback-train_1000
    assert path.name == f"tiny-gpt2__{dataset_name}__n4__seed1__maxlen64.pt"
    results = load_similarity_results(path)
    examples = load_preference_examples(dataset, dataset_format, num_samples=4, seed=1)
    assert results["sample_indices"].tolist() == [e.source_index for e in examples]
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    pairs = [tokenize_pair(tokenizer, e, 64) for e in examples]
    expected = compute_pair_measures(model.eval(), pairs, batch_size=1)
    for name in MEASURE_NAMES:
        torch.testing.assert_close(results[name], torch.tensor(expected[name], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)
    assert results["prompt_lengths"].tolist() == [len(p.prompt_ids) for p in pairs]
    assert all(p + max(c, r) <= 64 for p, c, r in zip(*(results[n].tolist() for n in LENGTH_NAMES)))
    summary = json.loads(path.with_suffix(".summary.json").read_text())
    assert summary["num_rows"] == 4 and summary["num_skipped"] == 0 and summary["ches_scores"]["count"] == 4
    assert summary["settings"]["complete"] is True


def test_default_batch_size_on_cpu_is_the_prompt_cache_path(tmp_path, ultrafeedback):
    """Without --batch_size a CPU run uses batch 1 (prompt key/value cache) and gives the batch-2 scores."""
    default = main(["--model", "tiny-gpt2", "--dataset", ultrafeedback, "--dataset_format", "ultrafeedback",
                    "--num_samples", "3", "--max_input_length", "64", "--output_dir", str(tmp_path / "default"),
                    "--device", "cpu"])
    packed = run(tmp_path / "packed", ultrafeedback, "ultrafeedback", "--num_samples", "3")
    default_results, packed_results = load_similarity_results(default), load_similarity_results(packed)
    assert default_results["settings"]["batch_size"] == 1 and packed_results["settings"]["batch_size"] == 2
    for name in MEASURE_NAMES:
        torch.testing.assert_close(default_results[name], packed_results[name], rtol=1e-5, atol=1e-6)


def test_skipped_row_keeps_its_place_and_overwrite_is_refused(tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."},
            {"prompt": "Same", "chosen": "x", "rejected": "x"},
            {"prompt": "Bye", "chosen": "Goodbye!", "rejected": "Later."}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    path = run(out, str(data), "prompt_chosen_rejected")
    results = load_similarity_results(path)
    assert results["sample_indices"].tolist() == [0, 1, 2]
    assert results["skip_reasons"] == ["", "chosen and rejected responses are identical", ""]
    for name in MEASURE_NAMES:
        values = results[name].tolist()
        assert math.isnan(values[1]) and not math.isnan(values[0]) and not math.isnan(values[2])
    assert [results[name][1].item() for name in LENGTH_NAMES] == [-1, -1, -1]
    assert results["minus_normalized_edit_distances"][0].item() < 0

    with pytest.raises(SystemExit, match="already exists"):
        run(out, str(data), "prompt_chosen_rejected")
    assert run(out, str(data), "prompt_chosen_rejected", "--overwrite") == path


def test_interrupted_run_leaves_a_partial_file_that_a_rerun_completes(tmp_path, ultrafeedback, monkeypatch):
    """3 pairs in batches of 2: the run is interrupted after the first batch (2 rows done), the partial file
    is readable, a rerun with other settings is refused, and a rerun with the same settings finishes it."""
    import compute_preference_similarity_per_example as script

    reference_path = run(tmp_path / "reference", ultrafeedback, "ultrafeedback", "--num_samples", "3")
    reference = load_similarity_results(reference_path)
    original = script.iterate_pair_measures

    def interrupted(*args, **kwargs):
        batches = original(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "iterate_pair_measures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, ultrafeedback, "ultrafeedback", "--num_samples", "3")
    monkeypatch.setattr(script, "iterate_pair_measures", original)
    path = script.output_path(script.parse_args(["--model", "tiny-gpt2", "--dataset", ultrafeedback,
                                                 "--dataset_format", "ultrafeedback", "--num_samples", "3",
                                                 "--max_input_length", "64", "--output_dir", str(tmp_path)]))
    partial = load_similarity_results(path, allow_partial=True)
    assert partial["settings"]["complete"] is False and partial["computed"].tolist().count(True) == 2
    assert torch.isnan(partial["ches_scores"]).sum().item() == 1
    with pytest.raises(SystemExit, match="different settings"):
        run(tmp_path, ultrafeedback, "ultrafeedback", "--num_samples", "3", "--dtype", "bfloat16")
    run(tmp_path, ultrafeedback, "ultrafeedback", "--num_samples", "3")
    torch.testing.assert_close(load_similarity_results(path)["ches_scores"], reference["ches_scores"])


@pytest.mark.parametrize("batch_size, path_name", [("2", "summarize_pair_hidden_states"),
                                                    ("1", "summarize_pair_with_prompt_cache")])
def test_self_check_rejects_a_model_the_fast_path_does_not_fit(tmp_path, ultrafeedback, monkeypatch, batch_size,
                                                              path_name):
    """A model whose fast result differs from its plain forward (simulated by doubling the sums) is refused, on
    the path the batch size selects (packed rows for > 1, prompt cache for 1)."""
    import compute_preference_similarity_per_example as script

    original = getattr(script, path_name)

    def broken(*args, **kwargs):
        summaries = original(*args, **kwargs)
        summaries.chosen_sums = summaries.chosen_sums * 2
        return summaries

    monkeypatch.setattr(script, path_name, broken)
    with pytest.raises(RuntimeError, match=f"self-check failed.*batch_size {batch_size} path"):
        run(tmp_path, ultrafeedback, "ultrafeedback", "--num_samples", "2", "--batch_size", batch_size)
