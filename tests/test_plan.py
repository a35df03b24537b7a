"""Plan expansion, templating, references and every class of validation error (common/plan.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.plan import PlanError, derive_seed, load_plan, parse_plan, sanitize_name
from tests.toy_family import ToyConfig


def write_plan(tmp_path: Path, plan: dict | str) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
    return path


def plan_with(base: dict, options: dict | None = None, **plan_fields) -> dict:
    return {"name": "p", "configurations": [{"base_config": base, "options": options or {}}], **plan_fields}


def problems_of(tmp_path: Path, plan: dict | str) -> str:
    with pytest.raises(PlanError) as info:
        load_plan(write_plan(tmp_path, plan), ToyConfig)
    return str(info.value)


def test_cartesian_product_and_templating(tmp_path):
    base = {"experiment_name": "toy_t{target}_lr{lr}", "outputs_dir": str(tmp_path), "target": 1.0, "lr": 0.1}
    plan = load_plan(write_plan(tmp_path, plan_with(base, {"target": [1.0, 2.5], "lr": [0.1, 1e-07]})), ToyConfig)
    names = [run.name for run in plan.runs]
    # product order: the first option varies slowest; '.' -> '-' in names
    assert names == ["toy_t1-0_lr0-1", "toy_t1-0_lr1e-07", "toy_t2-5_lr0-1", "toy_t2-5_lr1e-07"]
    assert plan.runs[3].config.target == 2.5 and plan.runs[3].config.lr == 1e-07
    assert plan.runs[1].overrides == {"target": 1.0, "lr": 1e-07}
    assert plan.runs[0].run_dir == tmp_path / "toy_t1-0_lr0-1"


def test_sanitize_name_rules():
    assert sanitize_name("a.b,c [d]") == "a-b-cd"
    assert sanitize_name("tags_['x', 'y']") == "tags_'x'-'y'"


def test_seed_derived_from_name_and_recorded(tmp_path):
    base = {"experiment_name": "seeded", "outputs_dir": str(tmp_path)}
    plan = load_plan(write_plan(tmp_path, plan_with(base)), ToyConfig)
    assert plan.runs[0].config.random_seed == derive_seed("seeded")
    # hand check: sha256("seeded") starts d427d15f = 3559379295; minus 2**31 = 1411895647
    assert derive_seed("seeded") == 1411895647
    # sha256("a") = ca978112ca1bbdca... (the FIPS 180-2 test vector); 0xca978112 = 3398926610 -> 1251442962
    assert derive_seed("a") == 1251442962


def test_skip_and_repetitions(tmp_path):
    base = {"experiment_name": "r{target}", "outputs_dir": str(tmp_path), "target": 1}
    raw = plan_with(base, {"target": [1, 2, 3]}, skip=1, repetitions=2)
    plan = load_plan(write_plan(tmp_path, raw), ToyConfig)
    assert [r.name for r in plan.runs] == ["r2_rep0", "r2_rep1", "r3_rep0", "r3_rep1"]
    assert plan.runs[0].config.random_seed != plan.runs[1].config.random_seed


def test_run_references_order_runs(tmp_path):
    raw = {"name": "chain", "configurations": [
        {"base_config": {"experiment_name": "dpo", "outputs_dir": str(tmp_path),
                         "load_model_checkpoint": "{run:sft}/model"}},
        {"base_config": {"experiment_name": "sft", "outputs_dir": str(tmp_path)}},
    ]}
    plan = load_plan(write_plan(tmp_path, raw), ToyConfig)
    assert [r.name for r in plan.runs] == ["sft", "dpo"]
    assert plan.runs[1].config.load_model_checkpoint == f"{tmp_path / 'sft'}/model"
    assert plan.runs[1].depends_on == ("sft",)


def test_legacy_fields_accepted_and_reported(tmp_path):
    base = {"experiment_name": "x", "outputs_dir": str(tmp_path), "save_logs": True, "gpu_ids": [0]}
    plan = load_plan(write_plan(tmp_path, plan_with(base)), ToyConfig)
    assert plan.ignored_legacy_fields == ["save_logs"]  # gpu_ids is mapped onto device, not ignored


@pytest.mark.parametrize(
    "plan, expected",
    [
        ('{"name": "p",\n "configurations": [}', "line 2, column"),  # JSON syntax
        (plan_with({"experiment_name": "x", "targt": 1}), "unknown field 'targt' (did you mean 'target'"),
        (plan_with({"experiment_name": "x", "steps": "3"}), "field 'steps' must be"),
        (plan_with({"experiment_name": "x", "lr": True}), "field 'lr' must be"),
        (plan_with({"experiment_name": "x"}, {"target": [1, 2]}), "field 'target' is not in base_config"),
        (plan_with({"experiment_name": "x_{nope}"}), "unresolved template field(s) ['nope']"),
        (plan_with({"experiment_name": "same", "target": 1}, {"target": [1, 2]}), "duplicate run directory"),
        (plan_with({"experiment_name": "../escape/x"}), "must be a plain name"),
        (plan_with({"experiment_name": "x", "steps": 0}), "steps must be >= 1"),
        (plan_with({"experiment_name": "x", "load_model_checkpoint": "{run:sfx}"}), "references unknown run 'sfx'"),
        ({"name": "p", "configurations": [{"options": {}}]}, "expected an object with a 'base_config'"),
        ({"name": "p", "configurations": [], "paralel": 2}, "unknown plan field 'paralel'"),
        ({"name": "p", "configurations": [], "skip": "1"}, "plan field 'skip' must be int"),
    ],
)
def test_validation_errors_name_the_field(tmp_path, plan, expected):
    message = problems_of(tmp_path, plan)
    assert expected in message
    assert str(tmp_path / "plan.json") in message


def test_configuration_index_in_message(tmp_path):
    raw = {"name": "p", "configurations": [{"base_config": {"experiment_name": "ok"}},
                                           {"base_config": {"experiment_name": "bad", "steps": -1}}]}
    assert "configurations[1] run 'bad': steps must be >= 1" in problems_of(tmp_path, raw)


def test_missing_required_field(tmp_path):
    from dataclasses import dataclass

    @dataclass(kw_only=True)
    class NeedsModel(ToyConfig):
        model_name: str

    with pytest.raises(PlanError, match="missing required field 'model_name'"):
        parse_plan(plan_with({"experiment_name": "x"}), tmp_path / "p.json", NeedsModel)


def test_reference_cycle_is_reported(tmp_path):
    raw = {"name": "p", "configurations": [
        {"base_config": {"experiment_name": "a", "load_model_checkpoint": "{run:b}"}},
        {"base_config": {"experiment_name": "b", "load_model_checkpoint": "{run:a}"}},
    ]}
    assert "cycle: a -> b -> a" in problems_of(tmp_path, raw)


def test_all_problems_reported_together(tmp_path):
    raw = {"name": "p", "configurations": [{"base_config": {"experiment_name": "x", "targt": 1}},
                                           {"base_config": {"experiment_name": "y", "stepz": 1}}]}
    message = problems_of(tmp_path, raw)
    assert "'targt'" in message and "'stepz'" in message
