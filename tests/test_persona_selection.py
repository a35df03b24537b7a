"""Persona prompt selection and (y+, y-) draws by the reference's torch rules (persona_experiments/data.py)."""

import pytest
import torch

from common.data_locations import find_local_data_file
from persona_experiments.data import PersonaExample, load_persona_examples, select_examples

PERSONA_FILE = "data_files/persona/ends-justify-means.jsonl"


def _examples(answers: str) -> list[PersonaExample]:
    """One example per character: Y -> "Yes", N -> "No"; index = position."""
    return [PersonaExample(i, f"q{i}", "Yes" if a == "Y" else "No") for i, a in enumerate(answers)]


def test_randperm_order_is_kept_literally():
    """7 "No" rows; torch.randperm(7, Generator().manual_seed(11)) = [4, 0, 2, 6, 3, 1, 5], so 3 samples are
    the 5th, 1st and 3rd "No" rows, in that order (not file order)."""
    examples = _examples("YNYNNYNNYNN")  # "No" rows: 1, 3, 4, 6, 7, 9, 10
    chosen = select_examples(examples, 3, "No", seed=11)
    assert [e.index for e in chosen] == [7, 1, 4]


def test_filter_is_strip_lower_and_all_means_file_order():
    """" no " matches "No" rows; -1 and n (= all rows) return them in file order without a permutation."""
    examples = _examples("YNYN")
    assert [e.index for e in select_examples(examples, None, " no ", seed=3)] == [1, 3]
    assert [e.index for e in select_examples(examples, 2, "no", seed=3)] == [1, 3]
    assert [e.index for e in select_examples(examples, 4, "", seed=3)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"num_train_samples must be in \[1, 2\]"):
        select_examples(examples, 3, "Yes", seed=3)


def test_seed_at_most_zero_uses_the_global_generator():
    """Seed <= 0: torch.randperm(n) on the global generator (seeded here with 11 -> the same perm as above)."""
    torch.manual_seed(11)
    expected = torch.randperm(7).tolist()[:2]
    torch.manual_seed(11)
    chosen = select_examples(_examples("NNNNNNN"), 2, "No", seed=-1)
    assert [e.index for e in chosen] == expected


@pytest.mark.parametrize("seed, row", [(9773, 793), (5290, 149), (8767, 639)])
def test_paper_seeds_select_the_reference_rows(seed, row):
    """The reference's post-SFT plans train on one "No" prompt per seed; these are its rows."""
    path = find_local_data_file(PERSONA_FILE)
    if path is None:
        pytest.skip(f"{PERSONA_FILE} not found locally (set LD_DATA_DIR)")
    (chosen,) = select_examples(load_persona_examples(str(path)), 1, "No", seed=seed)
    assert chosen.index == row
