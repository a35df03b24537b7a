"""Similarity files both ways between us and the reference implementation, and the reference's length filter
in dataset-level runs. Files are written here from small tensors (the reference's layout: five keys)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ches.ches import MEASURE_NAMES, load_similarity_results
from preference_training.config import PreferenceTrainingConfig
from preference_training.selection import select_examples, select_similarity_rows

# Rows of the source data in draw order, and their CHES scores.
REFERENCE_ROWS = [4, 0, 2, 3, 6]
REFERENCE_CHES = [0.5, -1.0, 2.0, 0.0, 1.0]


def reference_trainer_rows(file: dict, measure: str, quantile: float, k: int) -> list[int]:
    """The reference trainer's selection, restated: `dataset.select(sample_indices)`, then the window of k
    around round(q (n - 1)) of `argsort(scores)` (start = max(0, idx - k // 2), shifted back from the end)."""
    order = torch.argsort(torch.as_tensor(file[measure])).tolist()
    centre = int(np.round(quantile * (len(order) - 1)))
    start = max(0, centre - k // 2)
    end = start + k
    if end > len(order):
        end, start = len(order), max(0, len(order) - k)
    return sorted(int(file["sample_indices"][p]) for p in order[start:end])


def write_reference_file(path: Path) -> Path:
    scores = torch.tensor(REFERENCE_CHES)
    torch.save({"sample_indices": torch.tensor(REFERENCE_ROWS), "ches_scores": scores, "ln_ches_scores": scores / 10,
                "minus_normalized_edit_distances": -scores.abs() / 4, "last_hidden_embedding_inner_prods": scores * 3},
               path)
    return path


def write_dataset(path: Path, count: int, long_prompt_rows: tuple[int, ...] = ()) -> Path:
    rows = [{"prompt": ("Tell me everything about the ocean and its tides. " * 10 if i in long_prompt_rows
                        else f"Question {i}?"), "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(tmp_path: Path, dataset: Path, similarity: Path, **overrides) -> PreferenceTrainingConfig:
    fields = dict(model="tiny-gpt2", dataset=str(dataset), dataset_format="prompt_chosen_rejected",
                  similarity_results_path=str(similarity), pref_similarity_measure="ches_scores",
                  preference_num_samples=2, quantile=1.0, num_eval_samples=0, outputs_dir=str(tmp_path / "runs"))
    return PreferenceTrainingConfig(**(fields | overrides))


def test_reference_file_loads_and_drives_our_selection(tmp_path):
    """Scores by row: 0 -> -1.0, 3 -> 0.0, 4 -> 0.5, 6 -> 1.0, 2 -> 2.0. k = 2: q = 1 -> rows {6, 2}; q = 0 ->
    {0, 3}; q = 0.5 (centre rank 2, start 1) -> {3, 4}. Same as the reference trainer's rule for every q."""
    path = write_reference_file(tmp_path / "results_samples.pt")
    loaded = load_similarity_results(path)
    assert loaded["sample_indices"].tolist() == REFERENCE_ROWS and loaded["settings"]["source"] == "reference"
    assert loaded["skipped_sample_indices"].tolist() == [] and loaded["ches_scores"].dtype == torch.float64
    dataset = write_dataset(tmp_path / "data.jsonl", 8)
    expected = {1.0: [2, 6], 0.0: [0, 3], 0.5: [3, 4]}
    raw = torch.load(path, weights_only=True)
    for quantile, rows in expected.items():
        train_rows, drawn, _ = select_similarity_rows(config(tmp_path, dataset, path, quantile=quantile))
        assert sorted(train_rows) == rows == reference_trainer_rows(raw, "ches_scores", quantile, 2)
        assert drawn == REFERENCE_ROWS
    for quantile in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        for k in (1, 2, 3, 5):
            ours, _, _ = select_similarity_rows(config(tmp_path, dataset, path, quantile=quantile,
                                                       preference_num_samples=k))
            assert sorted(ours) == reference_trainer_rows(raw, "ches_scores", quantile, k), (quantile, k)


def test_reference_file_problems_name_the_file(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"sample_indices": torch.tensor([0, 1]), "ches_scores": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"bad.pt: missing fields \['ln_ches_scores'"):
        load_similarity_results(path)
    torch.save({name: torch.zeros(2) for name in MEASURE_NAMES} | {"sample_indices": torch.tensor([0])}, path)
    with pytest.raises(ValueError, match="bad.pt: fields are not in lockstep"):
        load_similarity_results(path)
    torch.save({name: torch.tensor([0.0, float("nan")]) for name in MEASURE_NAMES}
               | {"sample_indices": torch.tensor([0, 1])}, path)
    with pytest.raises(ValueError, match="bad.pt: ches_scores holds NaN"):
        load_similarity_results(path)
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="bad.pt: not a readable similarity file"):
        load_similarity_results(path)


def test_our_file_drives_the_reference_trainer_without_skipped_rows(tmp_path):
    """Rows 1 and 3 cannot be scored (an empty rejected response; a prompt longer than the limit). They are left
    out of the five arrays, so the reference trainer's q = 1 window (the highest scores) and every other window pick scored rows only; the reader returns them apart."""
    from compute_preference_similarity_per_example import main

    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer number {i}.", "rejected": f"No {i}."} for i in range(5)]
    rows[1]["rejected"] = ""
    rows[3]["prompt"] = "Tell me everything about the ocean. " * 20
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = main(["--model", "tiny-gpt2", "--dataset", str(data), "--output_dir", str(tmp_path / "o"),
                 "--max_input_length", "32", "--dont_save_logs"])
    raw = torch.load(path, weights_only=True)  # what the reference trainer does
    assert raw["sample_indices"].tolist() == [0, 2, 4]
    assert all(len(raw[name]) == 3 and not torch.isnan(raw[name]).any() for name in MEASURE_NAMES)
    for measure in MEASURE_NAMES:
        for quantile in (0.0, 0.5, 1.0):
            assert set(reference_trainer_rows(raw, measure, quantile, 2)) <= {0, 2, 4}
    loaded = load_similarity_results(path)
    assert loaded["skipped_sample_indices"].tolist() == [1, 3]
    assert loaded["skip_reasons"] == ["empty rejected response", "prompt longer than max_input_length 32"]
    selection_config = config(tmp_path, data, path, dataset_format="prompt_chosen_rejected", max_input_length=32,
                              quantile=1.0, preference_num_samples=3)
    train_rows, drawn, info = select_similarity_rows(selection_config)
    assert sorted(train_rows) == [0, 2, 4] and sorted(drawn) == [0, 1, 2, 3, 4]
    assert info["selection/num_skipped_by_similarity_script"] == 2


def test_dataset_level_run_drops_prompts_longer_than_max_input_length(tmp_path):
    """The reference trainer drops selected pairs whose prompt is longer than max_input_length: 4 selected
    rows, row 2's prompt (> 32 tokens) is dropped, 3 pairs train. With truncation keep_response all 4 train."""
    from common.config import RunContext
    from common.metrics_logger import MetricsLogger
    from preference_training.trainer import train_preference_model

    dataset = write_dataset(tmp_path / "data.jsonl", 6, long_prompt_rows=(2,))
    similarity = tmp_path / "results_samples.pt"
    torch.save({"sample_indices": torch.tensor([0, 1, 2, 3]), **{name: torch.tensor([1.0, 2.0, 3.0, 4.0])
                                                                 for name in MEASURE_NAMES}}, similarity)
    for truncation, expected in (("paper", 3), ("keep_response", 4)):
        run_config = config(tmp_path, dataset, similarity, quantile=0.0, preference_num_samples=4, max_input_length=32,
                            truncation=truncation, batch_size=4, epochs=1, lr=1e-4, reference_cache_dir="")
        assert run_config.validate() == []
        selected = select_examples(run_config)
        assert [e.source_index for e in selected.train] == [0, 1, 2, 3]
        run_dir = tmp_path / truncation
        run_dir.mkdir()
        logger = MetricsLogger(run_dir)
        result = train_preference_model(run_config, selected.train, selected.eval,
                                        RunContext(run_dir, torch.device("cpu"), logger, 0))
        logger.close()
        assert result.summary["num_train_pairs"] == expected
        assert result.summary["skipped_train_pairs"] == (
            {"prompt longer than max_input_length 32": 1} if truncation == "paper" else {})


def test_wrong_field_type_names_the_file(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({name: torch.tensor(1.0) for name in MEASURE_NAMES} | {"sample_indices": torch.tensor(0)}, path)
    with pytest.raises(ValueError, match="odd.pt: a field has the wrong type"):
        load_similarity_results(path)


def test_keep_restricts_the_pool_before_the_similarity_and_random_selection(tmp_path):
    """Scores by row: 0 -> -1.0, 3 -> 0.0, 4 -> 0.5, 6 -> 1.0, 2 -> 2.0. Keeping even rows only (0, 2, 4, 6), the
    2 lowest are rows {0, 4} (row 3 is out); the 2 highest {2, 6}. Without a file, all even rows of 0..7."""
    path = write_reference_file(tmp_path / "results_samples.pt")
    dataset = write_dataset(tmp_path / "data.jsonl", 8)
    even = set(range(0, 8, 2))
    assert sorted(select_similarity_rows(config(tmp_path, dataset, path, quantile=0.0), even)[0]) == [0, 4]
    assert sorted(select_similarity_rows(config(tmp_path, dataset, path, quantile=1.0), even)[0]) == [2, 6]
    with pytest.raises(ValueError, match="none of its scored rows can be selected"):
        select_similarity_rows(config(tmp_path, dataset, path), {1, 5, 7})  # unscored rows only
    with pytest.raises(ValueError, match="preference_num_samples=2 but only 1 scored rows pass"):
        select_similarity_rows(config(tmp_path, dataset, path), {0, 1})

    def is_even(example) -> bool:
        return example.source_index % 2 == 0

    lowest = select_examples(config(tmp_path, dataset, path, quantile=0.0), keep=is_even)
    assert sorted(example.source_index for example in lowest.train) == [0, 4]
    unfiltered = select_examples(config(tmp_path, dataset, path, similarity_results_path=None), keep=is_even)
    assert [example.source_index for example in unfiltered.train] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="data.jsonl: no pair is of row 9"):
        select_examples(config(tmp_path, dataset, path), keep=lambda example: False, keep_what="of row 9")


def test_more_pairs_asked_than_scored_names_the_field(tmp_path):
    """The reference file scores 5 rows (0, 2, 3, 4, 6): asking for 9 fails with the field and the count, with or
    without a training-pair filter."""
    path = write_reference_file(tmp_path / "results_samples.pt")
    dataset = write_dataset(tmp_path / "data.jsonl", 8)
    with pytest.raises(ValueError, match=r"preference_num_samples=9 but only 5 scored rows; lower"):
        select_similarity_rows(config(tmp_path, dataset, path, preference_num_samples=9))
