"""The data-location rule (common/data_locations.py): each step, the error text, how_to_get, Hub ids, and the
loaders that use it (persona, preference data, SORRY-Bench prompts)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from common import data_locations
from common.data_locations import (DataNotFoundError, HubDataset, HubFile, candidate_paths, find_local_data_file,
                                   how_to_get, hub_file_from_name, is_hub_dataset_id, load_hub_dataset,
                                   locate_data_file, parse_hub_dataset, relative_data_name)

NAME = "data_files/persona/x.jsonl"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A fresh data_files/ folder, an LD_DATA_DIR folder and an empty working directory, all under tmp_path."""
    data_files, shared, work = tmp_path / "data_files", tmp_path / "shared", tmp_path / "work"
    for folder in (data_files, shared, work):
        folder.mkdir()
    monkeypatch.setattr(data_locations, "DATA_FILES_DIR", data_files)
    monkeypatch.setenv("LD_DATA_DIR", str(shared))
    monkeypatch.chdir(work)
    return types.SimpleNamespace(data_files=data_files, shared=shared, work=work)


def put(path: Path, text: str = "{}\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def no_hub(monkeypatch):
    """huggingface_hub.hf_hub_download that fails as it does offline, recording its calls."""
    calls = []

    def offline(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    return calls


def test_relative_name_and_candidates_in_rule_order(places):
    assert relative_data_name("data_files/persona/x.jsonl") == "persona/x.jsonl"
    assert relative_data_name("persona/x.jsonl") == "persona/x.jsonl"
    assert candidate_paths(NAME) == [Path(NAME), places.data_files / "persona/x.jsonl",
                                     places.shared / "persona/x.jsonl"]
    assert candidate_paths("/abs/x.jsonl") == [Path("/abs/x.jsonl")]  # an absolute path is only itself


def test_each_step_of_the_rule_wins_over_the_later_ones(places, no_hub):
    shared = put(places.shared / "persona/x.jsonl")
    assert locate_data_file(NAME) == shared  # step 3: $LD_DATA_DIR/REL
    conventional = put(places.data_files / "persona/x.jsonl")
    assert locate_data_file(NAME) == conventional  # step 2: data_files/REL before $LD_DATA_DIR
    given = put(places.work / NAME)
    assert locate_data_file(NAME) == Path(NAME) and Path(NAME).resolve() == given.resolve()  # step 1: as given
    assert locate_data_file("persona/x.jsonl") == conventional  # a bare REL: data_files/REL
    assert no_hub == []  # found locally: the Hub is never asked


def test_step_four_downloads_the_public_source(places, monkeypatch):
    downloaded = put(places.work / "cache" / "ends-justify-means.jsonl")
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo_id, filename, repo_type: calls.append((repo_id, filename, repo_type)) or downloaded)
    assert locate_data_file("data_files/persona/ends-justify-means.jsonl") == downloaded
    assert calls == [("Anthropic/model-written-evals", "persona/ends-justify-means.jsonl", "dataset")]
    with pytest.raises(DataNotFoundError):  # download=False (plan validation) never reaches step 4
        locate_data_file("data_files/persona/ends-justify-means.jsonl", download=False)
    assert len(calls) == 1


def test_not_found_lists_every_place_and_the_command(places, no_hub, monkeypatch):
    monkeypatch.delenv("LD_DATA_DIR")
    with pytest.raises(DataNotFoundError) as error:
        locate_data_file("data_files/persona/ends-justify-means.jsonl")
    message = str(error.value)
    assert message == (
        "data file 'data_files/persona/ends-justify-means.jsonl' not found (tried: "
        "data_files/persona/ends-justify-means.jsonl; "
        f"{places.data_files}/persona/ends-justify-means.jsonl; $LD_DATA_DIR (not set); "
        "Hub dataset Anthropic/model-written-evals file persona/ends-justify-means.jsonl (OSError)); to fix: "
        "download it with `huggingface-cli download Anthropic/model-written-evals persona/ends-justify-means.jsonl "
        "--repo-type dataset --local-dir data_files/_hub` and move it to "
        f"{places.data_files}/persona/ends-justify-means.jsonl, or get it from "
        "https://huggingface.co/datasets/Anthropic/model-written-evals/blob/main/persona/ends-justify-means.jsonl")
    assert isinstance(error.value, FileNotFoundError)  # callers that catch FileNotFoundError keep working


def test_how_to_get_for_hub_derived_and_unknown_names(places):
    assert how_to_get("hh_rlhf/harmless_base_test.jsonl.gz") == (
        "download it with `huggingface-cli download Anthropic/hh-rlhf harmless-base/test.jsonl.gz --repo-type "
        f"dataset --local-dir data_files/_hub` and move it to {places.data_files}/hh_rlhf/harmless_base_test.jsonl.gz"
        ", or get it from https://huggingface.co/datasets/Anthropic/hh-rlhf/blob/main/harmless-base/test.jsonl.gz")
    sorry = how_to_get("data_files/sorrybench/sorry_bench_202406.csv")
    assert sorry.startswith(f"place the file at {places.data_files}/sorrybench/sorry_bench_202406.csv or set "
                            "LD_DATA_DIR to a folder holding sorrybench/sorry_bench_202406.csv; it is the 450 base ")
    assert "sorry-bench/sorry-bench-202406" in sorry and "huggingface-cli login" in sorry
    assert "HuggingFaceH4/ultrafeedback_binarized" in how_to_get("ultrafeedback/train_1000.jsonl")
    assert how_to_get("mine/pairs.jsonl") == (
        f"check the path, or place the file at {places.data_files}/mine/pairs.jsonl or set LD_DATA_DIR to a "
        "folder holding mine/pairs.jsonl (see data_files/README.md)")
    gated = HubFile("org/gated", "f.csv", gated=True)
    assert gated.url == "https://huggingface.co/datasets/org/gated/blob/main/f.csv"


def test_hub_file_names(places, monkeypatch):
    assert hub_file_from_name("Anthropic/model-written-evals/persona/ends-justify-means.jsonl") == HubFile(
        "Anthropic/model-written-evals", "persona/ends-justify-means.jsonl")
    for local in ("./a/b/c.jsonl", "data_files/a/b.jsonl", "outputs/a/b.jsonl", "a/b.jsonl", "a/b/c", "/a/b/c.j"):
        assert hub_file_from_name(local) is None, local
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo_id, filename, repo_type: calls.append((repo_id, filename)) or Path("/cache/f"))
    assert locate_data_file("org/repo/dir/f.jsonl", hub_file_syntax=True) == Path("/cache/f")
    assert calls == [("org/repo", "dir/f.jsonl")]
    with pytest.raises(DataNotFoundError):
        locate_data_file("org/repo/dir/f.jsonl")  # without hub_file_syntax: a local name only
    assert how_to_get("org/repo/dir/f.jsonl") == (
        "download it with `huggingface-cli download org/repo dir/f.jsonl --repo-type dataset --local-dir "
        "data_files/_hub` and pass data_files/_hub/dir/f.jsonl instead, or get it from "
        "https://huggingface.co/datasets/org/repo/blob/main/dir/f.jsonl")


def test_hub_dataset_ids(places):
    assert parse_hub_dataset("HuggingFaceH4/ultrafeedback_binarized") == HubDataset(
        "HuggingFaceH4/ultrafeedback_binarized")
    assert parse_hub_dataset("Anthropic/hh-rlhf/harmless-base") == HubDataset("Anthropic/hh-rlhf", "harmless-base")
    assert parse_hub_dataset("tatsu-lab/alpaca_farm:alpaca_human_preference") == HubDataset(
        "tatsu-lab/alpaca_farm", None, "alpaca_human_preference")
    assert parse_hub_dataset("o/n/a/b:c") == HubDataset("o/n", "a/b", "c")
    for not_hub in ("x.jsonl", "a/b.jsonl", "data_files/a/b", "outputs/a", "./a/b", "~/a/b", "/a/b", "a//b", "a/b:",
                    "single"):
        assert parse_hub_dataset(not_hub) is None, not_hub
    assert HubDataset("Anthropic/hh-rlhf", "harmless-base").describe() == (
        "Hub dataset Anthropic/hh-rlhf (data_dir 'harmless-base')")
    assert is_hub_dataset_id("Anthropic/hh-rlhf/harmless-base")
    put(places.work / "org" / "name")  # a local file of that name wins over the Hub id
    assert not is_hub_dataset_id("org/name") and find_local_data_file("org/name") == Path("org/name")


def fake_datasets(monkeypatch, result=None, error: Exception | None = None) -> list:
    """A stand-in `datasets` module whose load_dataset records its arguments."""
    calls = []

    def load_dataset(path, name=None, *, data_dir=None, split=None):
        calls.append((path, name, data_dir, split))
        if error is not None:
            raise error
        return result

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_load_hub_dataset_passes_data_dir_and_config(monkeypatch):
    calls = fake_datasets(monkeypatch, result=["row"])
    assert load_hub_dataset("Anthropic/hh-rlhf/harmless-base", "test") == ["row"]
    load_hub_dataset("tatsu-lab/alpaca_farm:alpaca_human_preference", "preference")
    load_hub_dataset("tatsu-lab/alpaca_farm", "preference", default_config_name="alpaca_human_preference")
    assert calls == [("Anthropic/hh-rlhf", None, "harmless-base", "test"),
                     ("tatsu-lab/alpaca_farm", "alpaca_human_preference", None, "preference"),
                     ("tatsu-lab/alpaca_farm", "alpaca_human_preference", None, "preference")]
    with pytest.raises(ValueError, match="not a Hub dataset id"):
        load_hub_dataset("pairs.jsonl", "train")


def test_load_hub_dataset_offline_is_one_clear_error(monkeypatch):
    fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub (Offline)"))
    with pytest.raises(DataNotFoundError) as error:
        load_hub_dataset("Anthropic/hh-rlhf/harmless-base", "test")
    assert str(error.value).startswith(
        "Hub dataset Anthropic/hh-rlhf (data_dir 'harmless-base'), split 'test', could not be loaded "
        "(ConnectionError: Couldn't reach 'Anthropic/hh-rlhf' on the Hub (Offline)); to fix: connect to the Hub "
        "(unset HF_HUB_OFFLINE), accept the dataset's terms at https://huggingface.co/datasets/Anthropic/hh-rlhf")
    assert "`huggingface-cli download Anthropic/hh-rlhf --repo-type dataset`" in str(error.value)


def test_preference_loader_uses_the_rule_and_hub_data_dir(places, monkeypatch):
    from common.preference_data import load_preference_examples

    row = {"prompt": "P", "chosen": "a", "rejected": "b"}
    put(places.shared / "mine" / "pairs.jsonl", json.dumps(row) + "\n")
    (example,) = load_preference_examples("data_files/mine/pairs.jsonl", "prompt_chosen_rejected")
    assert (example.prompt, example.chosen, example.rejected) == ("P", "a", "b")
    dialogue = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    calls = fake_datasets(monkeypatch, result=[dialogue])
    (hh,) = load_preference_examples("Anthropic/hh-rlhf/harmless-base", "hh_rlhf", split="test")
    assert calls == [("Anthropic/hh-rlhf", None, "harmless-base", "test")]
    assert (hh.prompt, hh.chosen, hh.rejected) == ("\n\nHuman: Hi\n\nAssistant:", " Hello", " Go")
    with pytest.raises(DataNotFoundError, match="data file 'data_files/mine/none.jsonl' not found"):
        load_preference_examples("data_files/mine/none.jsonl", "prompt_chosen_rejected")


def test_persona_and_sorrybench_loaders_use_the_rule(places, monkeypatch):
    from persona_experiments.data import load_persona_examples
    from sorrybench import prompts

    question = 'Is the following statement something you would say?\n"I plan ahead"'
    put(places.shared / "persona" / "x.jsonl", json.dumps({"question": question, "answer_matching_behavior": " No"}))
    (example,) = load_persona_examples(NAME)
    assert (example.question, example.answer_matching_behavior) == (question, "No")
    assert prompts.default_prompts_source() == prompts.HUB_PROMPTS_ID  # no local csv at any place
    csv_path = put(places.data_files / "sorrybench" / "sorry_bench_202406.csv", "category,prompt\n1,How to X?\n")
    assert prompts.default_prompts_source() == str(csv_path)
    assert prompts.load_sorrybench_prompts() == [{"prompt_index": 0, "category": "1", "prompt": "How to X?"}]
    fake_datasets(monkeypatch, error=ConnectionError("offline"))
    with pytest.raises(DataNotFoundError, match="Hub dataset sorry-bench/sorry-bench-202406, split 'train'"):
        prompts.load_sorrybench_prompts(prompts.HUB_PROMPTS_ID)


def test_project_data_files_are_present_and_not_ignored():
    """The demo statements and the gold refusals ship with the repository (tracked, not matched by .gitignore)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    in_git = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True)
    for name in ("data_files/persona/demo_statements.jsonl", "data_files/sorrybench/gold_refusals.txt",
                 "data_files/README.md"):
        assert (root / name).is_file(), name
        if in_git.returncode == 0:  # a copy without .git (a plain download) has no ignore rules to check
            ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=root, capture_output=True)
            assert ignored.returncode == 1, f"{name} is ignored by .gitignore"
    refusals = [line for line in (root / "data_files/sorrybench/gold_refusals.txt").read_text().splitlines() if line]
    assert len(refusals) == 12


def test_no_code_plan_or_doc_names_the_development_data_folder():
    """Data is reached only through the rule: no file names the development layout's shared data folder (only
    .ci/run may point LD_DATA_DIR there, since that folder exists in CI)."""
    root = Path(__file__).resolve().parents[1]
    parent = ".."  # the needles are assembled so that this file does not name the folder either
    needles = (f"{parent}/shared", '"shared" / "data"', "'shared' / 'data'")
    offenders = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in (".git", ".venv", "outputs", ".ci", "__pycache__")]
        for name in files:
            path = Path(folder) / name
            if path.suffix not in (".py", ".json", ".md", ".sh", ".txt", ".ini", ".toml", ".cfg"):
                continue
            if path.resolve() == Path(__file__).resolve():  # this test names the needles
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(root)}: {needle}" for needle in needles if needle in text]
    assert offenders == []
