"""One spelling of "off" per shared field (issue 14): None, with the older spellings read as it, also in the
identity check of finished runs (`common/training_field_checks.py`, `common/run_state.py`)."""

import json

import pytest

from common.config import config_to_dict
from common.io_utils import to_jsonable
from common.run_state import claim_run_dir, finished_state, run_identity
from common.training_field_checks import normalize_off_values
from persona_experiments.config import PersonaConfig
from preference_training.config import PreferenceTrainingConfig
from sorrybench.experiment import SorryBenchConfig
from tests.conftest import DEMO_PERSONA_DATASET


@pytest.mark.parametrize("config_cls", [PersonaConfig, PreferenceTrainingConfig, SorryBenchConfig])
def test_old_off_spellings_become_none(config_cls):
    config = config_cls(num_train_samples=-1, load_model_checkpoint="")
    assert config.num_train_samples is None and config.load_model_checkpoint is None
    assert not [p for p in config.validate() if "num_train_samples" in p or "load_model_checkpoint" in p]
    kept = config_cls(num_train_samples=5, load_model_checkpoint="ckpt/model")
    assert kept.num_train_samples == 5 and kept.load_model_checkpoint == "ckpt/model"
    assert "num_train_samples must be >= 1 or null" in "\n".join(config_cls(num_train_samples=-2).validate())


def test_normalize_touches_only_the_listed_spellings():
    class Fields:
        num_train_samples, load_model_checkpoint, lora_rank = -1, "", -1

    fields = Fields()
    normalize_off_values(fields)
    assert (fields.num_train_samples, fields.load_model_checkpoint, fields.lora_rank) == (None, None, -1)
    fields.num_train_samples, fields.load_model_checkpoint = 0, "0"  # not old spellings of off: left for validate
    normalize_off_values(fields)
    assert (fields.num_train_samples, fields.load_model_checkpoint) == (0, "0")


def test_finished_run_written_with_minus_one_stays_finished(tmp_path):
    """A run finished before the change has num_train_samples -1 and load_model_checkpoint "" in config.json; the
    same plan now resolves them to None and the run is still recognised as done (no rerun)."""
    config = PersonaConfig(model="tiny-gpt2", dataset=DEMO_PERSONA_DATASET, num_train_samples=-1,
                           load_model_checkpoint="", experiment_name="old", random_seed=1)
    run_dir = tmp_path / "old"
    claim_run_dir(run_dir, "old", "plan-key", replace_finished=False)
    saved = to_jsonable(config_to_dict(config))
    saved.update(num_train_samples=-1, load_model_checkpoint="")  # as the older code wrote them
    (run_dir / "config.json").write_text(json.dumps(saved))
    identity = run_identity(config, {})
    (run_dir / "status.json").write_text(json.dumps({"status": "done", "identity": identity}))
    (run_dir / "summary.json").write_text("{}")
    assert finished_state(run_dir, config, identity) == (True, "")
    saved["num_train_samples"] = 3  # a real change is still one
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert finished_state(run_dir, config, identity) == (False, "config changed: num_train_samples")
