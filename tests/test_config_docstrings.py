"""Every config field of every family is documented once in one style (issue 14), as TRL's dpo_config.py:
`name (`type`, defaults to `value`): meaning`, and the documented default is the field's default."""

import dataclasses
import json
import re

import pytest

from common.cli_overrides import field_meanings
from persona_experiments.config import PersonaConfig
from preference_training.config import PreferenceTrainingConfig
from sorrybench.experiment import SorryBenchConfig

TRL_ENTRY = re.compile(r"^ {8}(?P<name>[a-z_][a-z0-9_]*) \(`[^`]+`(?: or `[^`]+`)*, defaults to (?P<default>[^)]*)\):")
LITERAL = re.compile(r"^`(?P<value>[^`]*)`$")


def documented_entries(config_cls: type) -> dict[str, tuple[type, str]]:
    """Field -> (class whose docstring documents it, the text after 'defaults to'), subclass first wins."""
    entries: dict[str, tuple[type, str]] = {}
    for cls in config_cls.__mro__:
        for line in (cls.__doc__ or "").splitlines():
            match = TRL_ENTRY.match(line)
            if match:
                entries.setdefault(match["name"], (cls, match["default"]))
    return entries


def json_default(cls: type, name: str):
    """The default of field `name` as declared in `cls` (JSON-like: None -> null)."""
    value = cls.__dataclass_fields__[name]
    return value.default if value.default is not dataclasses.MISSING else value.default_factory()


@pytest.mark.parametrize("config_cls", [PersonaConfig, PreferenceTrainingConfig, SorryBenchConfig])
def test_every_field_has_one_trl_style_entry_with_its_default(config_cls):
    entries = documented_entries(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    assert [name for name in fields if name not in entries] == []
    meanings = field_meanings(config_cls)
    for name in fields:
        owner, default_text = entries[name]
        assert meanings[name], name
        literal = LITERAL.match(default_text.strip())
        assert literal, f"{owner.__name__}.{name}: default should be one backticked value, got {default_text!r}"
        text = literal["value"]
        expected = json_default(owner, name)
        documented = None if text == "None" else json.loads(text.replace("True", "true").replace("False", "false")
                                                            ) if text[:1] in '-0123456789[{"tTfF' else text
        assert documented == expected, f"{owner.__name__}.{name}: docstring says {text}, default is {expected!r}"


def test_field_meanings_read_the_trl_entries():
    """The --list_fields parser reads the entries (continuation lines joined, default not repeated)."""
    meanings = field_meanings(PersonaConfig)
    assert meanings["num_top_tokens"] == "k of the top-token lists (>= 1)."
    assert meanings["grad_entanglement_interval"] == ("Compute the diagnostics every this many optimiser steps "
                                                      "(>= 1; step 0 included); `None` = off (no cost).")
