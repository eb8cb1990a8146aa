"""A callback's plain-data state in a checkpoint: named private fields copied out and back in.

A compression callback resumes exactly from its ``state_dict``; most of it is plain fields (counters, flags, lists of
steps, reasons). :func:`plain_state` and :func:`load_plain_state` copy such fields by name (key ``"round"`` holds the
attribute ``_round``), so a callback writes out by hand only what needs converting.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["load_plain_state", "plain_state"]


def plain_state(owner: object, keys: Iterable[str]) -> dict[str, Any]:
    """Copies of ``owner``'s fields ``_<key>`` under their keys.

    Examples:
        >>> class Counter:
        ...     def __init__(self) -> None:
        ...         self._count, self._steps = 0, []
        >>> counter = Counter(); counter._count = 3
        >>> plain_state(counter, ("count", "steps"))
        {'count': 3, 'steps': []}
    """
    return {key: copy.deepcopy(getattr(owner, f"_{key}")) for key in keys}


def load_plain_state(owner: object, state: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Put :func:`plain_state`'s copies back; a key the checkpoint lacks leaves the field as it is (its default)."""
    for key in keys:
        if key in state:
            setattr(owner, f"_{key}", copy.deepcopy(state[key]))
