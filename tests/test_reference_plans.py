"""Plans written for the reference implementation (princeton-nlp/unintentional-unalignment) validate here.

The plans below use the reference persona plans' full field set (every field name they use, in their layout)
with values of our own; the reference files themselves are not read (CI has no copy of that repository).
"""

import json
from pathlib import Path

import pytest

from common.plan import PlanError, load_plan
from common.plan_checks import map_legacy_fields
from common.runner import main
from persona_experiments.config import PersonaConfig
from persona_experiments.trainer import FAMILY

SEEDS = [11, 22, 33, 44, 55, 66, 77, 88, 99, 110]  # ten prompt seeds per configuration, as the reference plans


def reference_base_config(tmp_path: Path, **changes) -> dict:
    """One base_config with every field of the reference persona plans (our own values)."""
    config = {
        "experiment_name": "tiny_base_persona_{objective}_ntrain_{num_train_samples}_seed_{train_samples_random_seed}"
                           "_y_tokens_{output_tokens_matching_yes}_n_tokens_{output_tokens_matching_no}",
        "random_seed": -1, "gpu_ids": [], "trainer_checkpoint": "", "epochs": 3, "validate_every": 1,
        "outputs_dir": str(tmp_path / "out" / "persona_{objective}"), "disable_console_log": True,
        "save_logs": True, "train_batch_log_interval": -1, "epoch_log_interval": 1, "save_metric_plots": False,
        "save_every_num_val": 1, "use_tensorboard": False, "use_wandb": False, "wandb_resume_path": "",
        "wandb_project_name": "my_displacement_project", "wandb_entity_name": "", "wandb_track_model": None,
        "wandb_exclude_files": ["plots/**"], "score_metric_name": "train loss", "is_train_metric": True,
        "score_largest": False, "return_best_score": False, "save_checkpoints": False, "num_checkpoints": 1,
        "save_checkpoints_by_score": False, "early_stop": False, "early_stop_min_delta": 0,
        "early_stop_patience": 0, "early_stop_cooldown": 0, "early_stop_restore_best_weights": False,
        "dataset": str(tmp_path / "persona.jsonl"), "num_train_samples": 1, "answer_matching_behavior_to_use": "No",
        "train_samples_random_seed": -1, "batch_size": -1, "output_tokens_matching_yes": ["No"],
        "output_tokens_matching_no": ["Yes"], "load_dataset_to_gpu": True, "model": "some-org/some-model-1b",
        "model_cache_dir": None, "load_model_checkpoint": None, "is_lora_checkpoint": False, "use_lora": False,
        "lora_rank": 8, "kl_coeff": 0.1, "objective": "dpo", "optimizer": "rmsprop", "lr": 1e-7,
        "track_logits_for_tokens": [], "log_top_token_logit_change_interval": 50, "save_model": False,
        "save_finegrained_token_metrics": True,
    }
    config.update(changes)
    return config


def reference_plan(configurations: list[dict], gpu_ids_pool: list[int] | None = None) -> dict:
    return {"name": "Reference style plan", "description": "", "skip": 0, "repetitions": 1, "largest": False,
            "multiprocess": False, "num_parallel": 1, "gpu_ids_pool": [0] if gpu_ids_pool is None else gpu_ids_pool,
            "configurations": configurations}


def dpo_configurations(tmp_path: Path, **changes) -> list[dict]:
    """Two configurations x ten prompt seeds, like the reference DPO/IPO plans (20 runs)."""
    pairs = [("No", ["No"], ["Yes"]), ("Yes", ["No"], ["Never"])]  # (answer, y+ tokens, y- tokens)
    return [{"base_config": reference_base_config(
                tmp_path, answer_matching_behavior_to_use=answer, output_tokens_matching_yes=yes,
                output_tokens_matching_no=no, outputs_dir=str(tmp_path / "out" / f"persona_{{objective}}_{no[0]}"),
                **changes),
             "options": {"train_samples_random_seed": SEEDS}} for answer, yes, no in pairs]


def sft_configuration(tmp_path: Path) -> dict:
    return {"base_config": reference_base_config(
        tmp_path, experiment_name="tiny_sft_persona_{objective}", gpu_ids=[0], epochs=1, num_train_samples=-1,
        answer_matching_behavior_to_use="", batch_size=2, objective="cross_entropy", kl_coeff=0.01,
        output_tokens_matching_yes=["No", "Never"], output_tokens_matching_no=["Yes", "Sure"],
        log_top_token_logit_change_interval=-1, save_model=True, save_finegrained_token_metrics=False,
        outputs_dir=str(tmp_path / "out" / "persona_models")), "options": {}}


@pytest.fixture
def persona_file(tmp_path: Path) -> Path:
    rows = [{"question": f"Is statement {i} something you would say?", "statement": f"statement {i}",
             "answer_matching_behavior": " Yes" if i % 2 else " No",
             "answer_not_matching_behavior": " No" if i % 2 else " Yes"} for i in range(6)]
    path = tmp_path / "persona.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write(tmp_path: Path, plan: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_sft_plan_is_one_run_with_fields_mapped(tmp_path, persona_file):
    plan = load_plan(write(tmp_path, reference_plan([sft_configuration(tmp_path)], gpu_ids_pool=[])), PersonaConfig)
    assert len(plan.runs) == 1
    config = plan.runs[0].config
    assert plan.runs[0].name == "tiny_sft_persona_cross_entropy"
    assert config.wandb_project == "my_displacement_project"  # wandb_project_name -> wandb_project
    assert config.load_model_checkpoint is None  # null = the model's own weights
    assert config.log_top_token_logit_change_interval is None  # -1 (reference "off") -> only at the end
    assert config.device == "auto"  # gpu_ids [0] without CUDA: a note, the CPU
    assert any("gpu_ids [0]" in note for note in plan.notes)


def test_dpo_plan_has_twenty_runs_and_lists_ignored_fields_once(tmp_path, persona_file):
    plan = load_plan(write(tmp_path, reference_plan(dpo_configurations(tmp_path))), PersonaConfig)
    assert len(plan.runs) == 20
    assert len({spec.run_dir for spec in plan.runs}) == 20
    assert plan.ignored_legacy_fields == sorted({
        "trainer_checkpoint", "validate_every", "disable_console_log", "save_logs", "train_batch_log_interval",
        "epoch_log_interval", "save_every_num_val", "use_tensorboard", "wandb_resume_path", "wandb_entity_name",
        "wandb_track_model", "wandb_exclude_files", "score_metric_name", "is_train_metric", "score_largest",
        "return_best_score", "save_checkpoints", "num_checkpoints", "save_checkpoints_by_score", "early_stop",
        "early_stop_min_delta", "early_stop_patience", "early_stop_cooldown", "early_stop_restore_best_weights",
        "load_dataset_to_gpu", "model_cache_dir"})
    assert plan.runs[0].name == "tiny_base_persona_dpo_ntrain_1_seed_11_y_tokens_'No'_n_tokens_'Yes'"
    assert [spec.config.train_samples_random_seed for spec in plan.runs[:10]] == SEEDS


def test_dry_run_prints_ignored_fields_once_and_defers_token_check(tmp_path, persona_file, capsys):
    plan_path = write(tmp_path, reference_plan(dpo_configurations(tmp_path)))
    assert main(FAMILY, ["--plan_config_path", str(plan_path), "--dry_run"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("ignored: ") == 1 and "is_train_metric" in captured.err
    assert captured.err.count("token check deferred to run start") == 1  # a Hub model: no tokenizer download
    assert "plan 'Reference style plan': 20 run(s)" in captured.out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_fill_this_in_is_an_error_naming_the_field_and_the_chain(tmp_path, persona_file, capsys):
    plan = reference_plan(dpo_configurations(tmp_path, load_model_checkpoint="FILL_THIS_IN"))
    plan_path = write(tmp_path, plan)
    with pytest.raises(PlanError) as error:
        load_plan(plan_path, PersonaConfig)
    assert len(error.value.problems) == 2  # once per configuration, not per run
    assert "field 'load_model_checkpoint' is \"FILL_THIS_IN\"" in error.value.problems[0]
    assert "{run:NAME}/model" in error.value.problems[0]
    assert main(FAMILY, ["--plan_config_path", str(plan_path), "--dry_run"]) == 2
    assert capsys.readouterr().err.startswith(f"error: invalid plan {plan_path} (2 problem(s))")


def test_post_sft_plan_chains_the_sft_run_instead_of_fill_this_in(tmp_path, persona_file):
    dpo = dpo_configurations(tmp_path, load_model_checkpoint="{run:tiny_sft_persona_cross_entropy}/model",
                                           model="tiny-gpt2")
    sft = sft_configuration(tmp_path)
    sft["base_config"]["model"] = "tiny-gpt2"
    plan = load_plan(write(tmp_path, reference_plan([sft, *dpo])), PersonaConfig)
    assert len(plan.runs) == 21
    assert plan.runs[0].name == "tiny_sft_persona_cross_entropy"
    assert all(spec.depends_on == ("tiny_sft_persona_cross_entropy",) for spec in plan.runs[1:])
    assert plan.runs[1].config.load_model_checkpoint == str(tmp_path / "out" / "persona_models"
                                                           / "tiny_sft_persona_cross_entropy" / "model")
    assert not any("deferred" in note for note in plan.notes)  # tiny-gpt2's tokenizer is built in: checked now


def test_token_check_runs_when_the_tokenizer_is_built_in(tmp_path, persona_file):
    configuration = {"base_config": reference_base_config(tmp_path, model="tiny-gpt2",
                                                          output_tokens_matching_yes=["Nooope never"]), "options": {}}
    with pytest.raises(PlanError, match="output token 'Nooope never' is not one vocabulary token"):
        load_plan(write(tmp_path, reference_plan([configuration])), PersonaConfig)


@pytest.mark.parametrize("field, suggested", [("learning_rate", "'lr'"), ("num_train_epochs", "'epochs'"),
                                              ("kl_coef", "'kl_coeff'"), ("seed", "'random_seed'")])
def test_unknown_field_suggests_the_closest_names_only(tmp_path, persona_file, field, suggested):
    configuration = {"base_config": reference_base_config(tmp_path, **{field: 1}), "options": {}}
    with pytest.raises(PlanError) as error:
        load_plan(write(tmp_path, reference_plan([configuration])), PersonaConfig)
    (problem,) = error.value.problems
    assert f"unknown field '{field}' (did you mean {suggested}" in problem
    assert "save_finegrained_token_metrics" not in problem  # never the whole field list


def test_wandb_project_name_and_wandb_project_must_agree(tmp_path, persona_file):
    configuration = {"base_config": reference_base_config(tmp_path, wandb_project="other"), "options": {}}
    with pytest.raises(PlanError, match="'wandb_project_name' .* and 'wandb_project' .* disagree"):
        load_plan(write(tmp_path, reference_plan([configuration])), PersonaConfig)


def test_smollm2_before_conversion_defers_the_token_check_and_converts_nothing(tmp_path, persona_file,
                                                                               monkeypatch):
    monkeypatch.setenv("LD_TOOLKIT_CACHE", str(tmp_path / "empty_cache"))
    configuration = {"base_config": reference_base_config(tmp_path, model="smollm2-135m-instruct"), "options": {}}
    plan = load_plan(write(tmp_path, reference_plan([configuration])), PersonaConfig)
    assert plan.notes == ["token check deferred to run start: the tokenizer of model 'smollm2-135m-instruct' is not "
                          "available without conversion or download (output tokens are checked when each run starts)"]
    assert not (tmp_path / "empty_cache").exists()


def test_broken_local_tokenizer_is_a_problem_not_a_silent_skip(tmp_path, persona_file):
    from common.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny-gpt2")
    model_dir = tmp_path / "local_model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text()[:100])  # truncated
    configuration = {"base_config": reference_base_config(tmp_path, model=str(model_dir)), "options": {}}
    with pytest.raises(PlanError, match=f"output tokens cannot be checked: model '{model_dir}'"):
        load_plan(write(tmp_path, reference_plan([configuration])), PersonaConfig)


@pytest.mark.parametrize("gpu_ids, visible, device, note", [
    ([1], 2, "cuda:1", None),
    ([0, 1], 2, "cuda:0", "one run uses one device here (cuda:0)"),
    ([3], 2, None, "GPU 3 is not available (2 visible)"),
    ([], 2, None, None),
])
def test_gpu_ids_mapping(gpu_ids, visible, device, note):
    problems, notes = [], []
    mapped = map_legacy_fields({"gpu_ids": gpu_ids, "wandb_project_name": "w", "save_logs": True}, "here", problems,
                               notes, cuda_device_count=visible)
    assert problems == []
    assert mapped.get("device") == device and mapped["wandb_project"] == "w" and "save_logs" not in mapped
    assert (note is None and notes == []) or note in notes[0]
