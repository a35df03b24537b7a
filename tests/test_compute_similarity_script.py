"""End-to-end tests of compute_preference_similarity_per_example.py on tiny-gpt2 with small local files written
here (in the real schemas), including a re-statement of the reference script's rule (`reference_rule_scores`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ches.ches import LENGTH_NAMES, MEASURE_NAMES, levenshtein_distance, load_similarity_results
from common.models import load_model_and_tokenizer
from common.preference_tokenization import (
    PAPER_ASSISTANT_TOKEN, PAPER_PROMPTER_TOKEN, prepare_tokenizer_for_prompt_format,
)
from compute_preference_similarity_per_example import main


def messages(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


# UltraFeedback binarized rows (Hub schema). Row 2's prompt is longer than the 40-token limit used below, row 3 has
# identical responses, row 4 an empty rejected response, row 5 a chosen response cut by the limit.
UF_TEXTS = [
    ("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Fry it."),
    ("Name a planet.", "Mars is a planet.", "The Sun is a planet."),
    ("Write about the sea. " * 12, "The sea is wide.", "Waves."),
    ("Say hello.", "Hello!", "Hello!"),
    ("Count to three.", "One, two, three.", ""),
    ("Tell me a story.", "Once upon a time " * 8 + "the end.", "No."),
    ("What is two plus two?", "Four.", "Two plus two is five."),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def ultrafeedback_file(tmp_path) -> Path:
    rows = [{"prompt": p, "chosen": messages(p, c), "rejected": messages(p, r), "score_chosen": 8.0,
             "score_rejected": 4.0} for p, c, r in UF_TEXTS]
    (tmp_path / "uf").mkdir()
    return write_jsonl(tmp_path / "uf" / "train_prefs.jsonl", rows)


def run(output_dir: Path, dataset: Path | str, *extra: str) -> Path:
    return main(["--model", "tiny-gpt2", "--dataset", str(dataset), "--output_dir", str(output_dir),
                 "--dont_save_logs", *extra])


def reference_rule_scores(rows: list[tuple[str, str, str]], max_input_length: int | None) -> dict[int, dict]:
    """The reference script's computation, restated: `<|prompter|>p<|assistant|>` + response as ONE string,
    tokenized with right truncation to L; response = ids after the query; dropped when empty; hidden states of a
    full forward from position query_len - 1 to the end; edit distance over the response ids."""
    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    prepare_tokenizer_for_prompt_format(tokenizer, model, "paper")
    model.eval()
    encode = lambda text: tokenizer(text, truncation=max_input_length is not None, max_length=max_input_length,
                                    add_special_tokens=True)["input_ids"]
    scores = {}
    for row, (prompt, chosen, rejected) in enumerate(rows):
        query = f"{PAPER_PROMPTER_TOKEN}{prompt}{PAPER_ASSISTANT_TOKEN}"
        query_length, texts = len(encode(query)), [encode(query + chosen), encode(query + rejected)]
        if any(len(ids) == query_length for ids in texts):
            continue
        with torch.no_grad():
            hidden = [model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
                      [query_length - 1:].double() for ids in texts]
        plus, minus = hidden[0].sum(0), hidden[1].sum(0)
        n_plus, n_minus = len(hidden[0]), len(hidden[1])
        responses = [ids[query_length:] for ids in texts]
        scores[row] = {
            "ches_scores": (plus @ minus - plus @ plus).item(),
            "ln_ches_scores": (plus @ minus / (n_plus * n_minus) - plus @ plus / n_plus ** 2).item(),
            "minus_normalized_edit_distances": -levenshtein_distance(*responses) / max(map(len, responses)),
            "last_hidden_embedding_inner_prods": (hidden[0][-1] @ hidden[1][-1]).item(),
        }
    return scores


def test_scores_and_rows_follow_the_reference_rule(tmp_path, ultrafeedback_file):
    """Max length 40: row 2 (long prompt) and row 4 (empty response) are dropped, row 3 (identical) is kept
    with CHES 0, row 5's chosen response is cut; every score equals the restated reference computation."""
    path = run(tmp_path / "out", ultrafeedback_file, "--max_input_length", "40", "--custom_dataset_display_name", "uf")
    assert path == tmp_path / "out" / "tiny-gpt2_uf" / "results_samples.pt"
    results = load_similarity_results(path)
    expected = reference_rule_scores(UF_TEXTS, 40)
    assert sorted(expected) == [0, 1, 3, 5, 6]
    assert results["sample_indices"].tolist() == [0, 1, 3, 5, 6]
    assert results["skipped_sample_indices"].tolist() == [2, 4]
    assert results["skip_reasons"] == ["prompt longer than max_input_length 40",
                                       "empty rejected response"]
    for name in MEASURE_NAMES:
        torch.testing.assert_close(results[name], torch.tensor([expected[row][name] for row in [0, 1, 3, 5, 6]],
                                                               dtype=torch.float64), rtol=1e-4, atol=1e-5)
    assert results["ches_scores"][2].item() == 0.0 and results["ln_ches_scores"][2].item() == 0.0  # identical
    assert results["minus_normalized_edit_distances"][2].item() == 0.0
    assert all(p + c - 1 <= 40 for p, c in zip(results["prompt_lengths"].tolist(), results["chosen_lengths"].tolist()))
    summary = json.loads((path.parent / "summary.json").read_text())
    assert (summary["num_drawn"], summary["num_scored"], summary["num_skipped"]) == (7, 5, 2)


def test_reference_readme_command(tmp_path, ultrafeedback_file, capsys):
    """The README's flag set: --num_train_samples with --train_samples_random_seed 548 draws
    torch.randperm(7, generator=manual_seed(548))[:4] = [0, 5, 3, 2] (in that order); --gpu_id 0 without CUDA
    falls back to the CPU with a warning; --max_input_length -1 = no truncation (row 2 is then scored)."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback of --gpu_id")
    path = main(["--model", "tiny-gpt2", "--dataset", str(ultrafeedback_file), "--output_dir", str(tmp_path / "o"),
                 "--num_train_samples", "4", "--train_samples_random_seed", "548", "--gpu_id", "0",
                 "--max_input_length", "-1", "--cache_dir", str(tmp_path / "cache")])
    assert path == tmp_path / "o" / "tiny-gpt2_uf_train_prefs" / "results_samples.pt"
    assert "CUDA is not available" in capsys.readouterr().err
    results = load_similarity_results(path)
    assert results["drawn_sample_indices"].tolist() == [0, 5, 3, 2]
    assert results["sample_indices"].tolist() == [0, 5, 3, 2]
    assert results["settings"]["dataset_format"] == "ultrafeedback"  # inferred
    assert list(path.parent.glob("log_samples_4_*.log"))


def test_sorrybench_command_with_chat_template_model(tmp_path):
    """The README's second command (--custom_dataset_display_name sorrybench --max_input_length -1) on a
    SORRY-Bench preference file; tiny-llama has a chat template, so the paper format uses it."""
    data = write_jsonl(tmp_path / "prefs.jsonl", [
        {"query": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a pin.",
         "category": "1"},
        {"query": "Write an insult.", "chosen": "I'd rather not.", "rejected": "You are dull.", "category": "2"}])
    path = main(["--model", "tiny-llama", "--dataset", str(data), "--output_dir", str(tmp_path / "o"),
                 "--custom_dataset_display_name", "sorrybench", "--max_input_length", "-1", "--dont_save_logs"])
    assert path == tmp_path / "o" / "tiny-llama_sorrybench" / "results_samples.pt"
    results = load_similarity_results(path)
    assert results["sample_indices"].tolist() == [0, 1]
    assert results["settings"]["dataset_format"] == "sorrybench_prefs"


def test_alpaca_farm_file(tmp_path):
    data = write_jsonl(tmp_path / "alpaca_farm.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output_1": "5", "output_2": "6", "preference": 1},
        {"instruction": "Name a colour.", "input": "", "output_1": "Loud", "output_2": "Blue", "preference": 2}])
    path = run(tmp_path / "o", data)
    results = load_similarity_results(path)
    assert results["settings"]["dataset_format"] == "alpaca_farm" and results["sample_indices"].tolist() == [0, 1]
    # "5" vs "6" (one token each, no EOS counted): one substitution -> -1.
    assert results["minus_normalized_edit_distances"][0].item() == -1.0


def test_ours_as_options(tmp_path, ultrafeedback_file):
    """keep_response + skip_identical_pairs: the long prompt is cut from the left (row 2 scored), the
    identical pair is skipped; whitespace-only/empty responses are skipped too."""
    path = run(tmp_path / "o", ultrafeedback_file, "--max_input_length", "40", "--truncation", "keep_response",
               "--skip_identical_pairs")
    results = load_similarity_results(path)
    assert results["sample_indices"].tolist() == [0, 1, 2, 5, 6]
    assert results["skip_reasons"] == ["chosen and rejected responses are identical", "empty rejected response"]
    assert all(p + max(c, r) <= 41 for p, c, r in zip(*(results[name].tolist() for name in LENGTH_NAMES)))


@pytest.mark.parametrize("flags, message", [
    (["--num_train_samples", "0"], "--num_train_samples 0 selects no pair"),
    (["--max_input_length", "1"], "--max_input_length 1 leaves no room"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--custom_dataset_display_name", "a/b"], "--custom_dataset_display_name: 'a/b' cannot name a directory"),
])
def test_bad_arguments_exit_2_before_any_output(tmp_path, ultrafeedback_file, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "o", ultrafeedback_file, *flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_or_unrecognised_dataset_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path / "o", tmp_path / "missing.jsonl")
    assert "missing.jsonl" in capsys.readouterr().err
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "x"}])
    with pytest.raises(SystemExit):
        run(tmp_path / "o", odd)
    assert "pass --dataset_format" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_existing_output_refused_corrupt_output_named(tmp_path, ultrafeedback_file, capsys):
    path = run(tmp_path / "o", ultrafeedback_file, "--num_train_samples", "2", "--train_samples_random_seed", "1")
    with pytest.raises(SystemExit):
        run(tmp_path / "o", ultrafeedback_file, "--num_train_samples", "2", "--train_samples_random_seed", "1")
    assert "already exists (complete); pass --overwrite" in capsys.readouterr().err
    path.write_bytes(b"not a torch file")
    with pytest.raises(SystemExit):
        run(tmp_path / "o", ultrafeedback_file)
    assert f"{path}: not a readable similarity file" in capsys.readouterr().err
    assert run(tmp_path / "o", ultrafeedback_file, "--overwrite") == path
    path.unlink()
    partial = path.with_name("results_samples.partial.pt")
    partial.write_bytes(b"truncated")
    with pytest.raises(SystemExit):
        run(tmp_path / "o", ultrafeedback_file)
    assert f"{partial}: not a readable similarity file" in capsys.readouterr().err


def test_interrupted_run_leaves_a_partial_file_that_a_rerun_completes(tmp_path, ultrafeedback_file, monkeypatch,
                                                                       capsys):
    """5 scorable pairs in batches of 2: interrupted after the first batch, the partial file holds 2 scored rows
    (plus the 2 skipped), other settings are refused, the same settings finish it with the uninterrupted scores."""
    import compute_preference_similarity_per_example as script

    flags = ["--max_input_length", "40", "--batch_size", "2"]
    reference = load_similarity_results(run(tmp_path / "reference", ultrafeedback_file, *flags))
    original = script.iterate_pair_measures

    def interrupted(*args, **kwargs):
        batches = original(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "iterate_pair_measures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "o", ultrafeedback_file, *flags)
    monkeypatch.setattr(script, "iterate_pair_measures", original)
    partial_path = tmp_path / "o" / "tiny-gpt2_uf_train_prefs" / script.PARTIAL_FILE
    partial = load_similarity_results(partial_path, allow_partial=True)
    assert partial["settings"]["complete"] is False and len(partial["sample_indices"]) == 2
    assert len(partial["skipped_sample_indices"]) == 2
    with pytest.raises(SystemExit):
        run(tmp_path / "o", ultrafeedback_file, *flags, "--dtype", "bfloat16")
    assert "partial file from other settings" in capsys.readouterr().err
    path = run(tmp_path / "o", ultrafeedback_file, *flags)
    assert not partial_path.exists()
    final = load_similarity_results(path)
    assert final["sample_indices"].tolist() == reference["sample_indices"].tolist()
    torch.testing.assert_close(final["ches_scores"], reference["ches_scores"])


def test_default_batch_size_on_cpu_is_the_prompt_cache_path(tmp_path, ultrafeedback_file):
    """Without --batch_size a CPU run uses batch 1 (prompt key/value cache) and gives the batch-2 scores (fp32
    sums of ~1e2 give CHES differences of ~1e-5 between the two paths: atol 1e-4)."""
    default = load_similarity_results(run(tmp_path / "default", ultrafeedback_file))
    packed = load_similarity_results(run(tmp_path / "packed", ultrafeedback_file, "--batch_size", "2"))
    assert default["settings"]["batch_size"] == 1 and packed["settings"]["batch_size"] == 2
    for name in MEASURE_NAMES:
        torch.testing.assert_close(default[name], packed[name], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("batch_size, path_name", [("2", "summarize_pair_hidden_states"),
                                                    ("1", "summarize_pair_with_prompt_cache")])
def test_self_check_rejects_a_model_the_fast_path_does_not_fit(tmp_path, ultrafeedback_file, monkeypatch,
                                                               batch_size, path_name):
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
        run(tmp_path, ultrafeedback_file, "--batch_size", batch_size)


def test_unreachable_model_exits_2_before_any_output(tmp_path, ultrafeedback_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "no_such_model"), "--dataset", str(ultrafeedback_file),
              "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_chat_field_flags_rename_the_response_columns(tmp_path):
    """--chat_chosen_field good --chat_rejected_field bad read responses from other columns (format inferred
    after the renaming: query/chosen/rejected -> sorrybench_prefs)."""
    data = write_jsonl(tmp_path / "renamed.jsonl", [{"query": "Hi?", "good": "Hello there.", "bad": "Go away."}])
    path = run(tmp_path / "o", data, "--chat_chosen_field", "good", "--chat_rejected_field", "bad")
    results = load_similarity_results(path)
    assert results["sample_indices"].tolist() == [0] and results["settings"]["dataset_format"] == "sorrybench_prefs"
