"""`preference_training.selection._check_settings`: a similarity file must describe the same data as the run
(dataset by the data-location rule, format, prompt limit, truncation, and the split for a Hub data set); keys the
file does not record are not checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from preference_training.config import PreferenceTrainingConfig
from preference_training.selection import _check_settings


def run_config(dataset: str, **overrides) -> PreferenceTrainingConfig:
    return PreferenceTrainingConfig(dataset=dataset, dataset_format="ultrafeedback", max_input_length=512,
                                    truncation="paper", similarity_results_path="sims.pt", **overrides)


def recorded(dataset: str, **overrides) -> dict:
    return {"dataset": dataset, "dataset_format": "ultrafeedback", "max_input_length": 512, "truncation": "paper",
            "split": "train", **overrides}


def test_same_settings_pass_and_unrecorded_keys_are_not_checked(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    _check_settings(run_config(str(data)), recorded(str(data)))
    _check_settings(run_config(str(data)), {})  # an older file without settings: nothing to compare


def test_dataset_compares_the_resolved_file(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    (tmp_path / "sub").mkdir()
    _check_settings(run_config(str(tmp_path / "sub" / ".." / "pairs.jsonl")), recorded(str(data)))
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    with pytest.raises(ValueError, match=r"computed with dataset='.*pairs\.jsonl', but the run has "
                                         r"dataset='.*other\.jsonl'"):
        _check_settings(run_config(str(other)), recorded(str(data)))


@pytest.mark.parametrize(("key", "file_value", "file_text", "run_text"),
                         [("dataset_format", "hh_rlhf", "'hh_rlhf'", "'ultrafeedback'"),
                          ("max_input_length", 256, "256", "512"),
                          ("truncation", "none", "'none'", "'paper'")])
def test_each_mismatch_names_the_file_the_key_and_the_fix(tmp_path: Path, key: str, file_value: object,
                                                          file_text: str, run_text: str) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    settings = recorded(str(data), **{key: file_value})
    expected = (f"similarity_results_path sims.pt: computed with {key}={file_text}, but the run has "
                f"{key}={run_text}; rerun compute_preference_similarity_per_example.py with the run's settings "
                f"or change the run config")
    with pytest.raises(ValueError) as error:
        _check_settings(run_config(str(data)), settings)
    assert str(error.value) == expected


def test_split_is_checked_only_for_a_hub_dataset(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    _check_settings(run_config(str(data), dataset_split="test"), recorded(str(data), split="train"))  # local file
    hub = "someone/preference-pairs"
    _check_settings(run_config(hub), recorded(hub))
    with pytest.raises(ValueError, match=r"computed with split='train', but the run has split='test'"):
        _check_settings(run_config(hub, dataset_split="test"), recorded(hub, split="train"))
