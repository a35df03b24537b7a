"""Attributes set for the duration of a block and restored after it: the one mechanism behind the fast paths that
switch a module instance's `forward` or a modeling module's function (`common.direct_grads`,
`common.compiled_blocks`).

    with swapped_attributes([(linear, "forward", fast_forward), (modeling, "apply_rotary_pos_emb", fused)]):
        model(**inputs)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

_ABSENT = object()


@contextmanager
def swapped_attributes(replacements: Iterable[tuple[object, str, object]]) -> Iterator[int]:
    """`setattr(owner, name, value)` for each (owner, name, value), taken from `replacements` one at a time (so a
    value may be built from the attribute it replaces), for the block; yields how many were set.

    On exit, also after an exception, each is undone in reverse order: an attribute that was in the owner's own
    `__dict__` gets its old value back, one the owner only inherited (a module's class `forward`) is deleted again.
    """
    undo: list[tuple[object, str, object]] = []
    try:
        for owner, name, value in replacements:
            undo.append((owner, name, vars(owner).get(name, _ABSENT)))
            setattr(owner, name, value)
        yield len(undo)
    finally:
        for owner, name, previous in reversed(undo):
            if previous is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
