"""Argument checks shared by every public constructor and function: one message shape, naming the argument.

Each check raises ``ValueError("`name` must be <what is accepted>, got <value>.")``. Booleans are never numbers here
(``True`` is not a count of rounds). The module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_int_range",
    "check_metadata",
    "check_names",
    "check_number",
    "check_parameters",
    "is_number",
]


def is_number(value: Any) -> bool:
    """An int or a finite float, not a bool.

    Examples:
        >>> is_number(3), is_number(0.5), is_number(True), is_number(float("nan")), is_number("1")
        (True, True, False, False, False)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
) -> None:
    """Check that ``value`` is a number (an int with ``integer``) within the bounds, or None with ``allow_none``.

    Raises:
        ValueError: naming ``name`` and the accepted range.

    Examples:
        >>> check_number("rounds", 0, low=1, integer=True)
        Traceback (most recent call last):
        ...
        ValueError: `rounds` must be an int >= 1, got 0.
    """
    if value is None and allow_none:
        return
    ok = is_number(value) and (not integer or isinstance(value, int))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "an int" if integer else "a number"
    if low is not None and high is not None:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        what = f"{kind} in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        what = f"{kind} {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what = f"{kind} {'<' if high_open else '<='} {high:g}"
    else:
        what = kind
    raise ValueError(f"`{name}` must be {'None or ' if allow_none else ''}{what}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Collection[Any], allow_none: bool = False) -> None:
    """Check that ``value`` is one of ``choices`` (or None with ``allow_none``).

    Raises:
        ValueError: naming ``name`` and listing the choices.
    """
    if value is None and allow_none:
        return
    if isinstance(value, str | int | float | bool) and any(value == c and type(value) is type(c) for c in choices):
        return
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"`{name}` must be {'None or ' if allow_none else ''}one of {listed}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Check that ``value`` is True or False.

    Raises:
        ValueError: naming ``name``.
    """
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_names(name: str, value: Any, allow_none: bool = True) -> None:
    """Check that ``value`` is a list of strings (module or metric names), or None.

    Raises:
        ValueError: naming ``name``.
    """
    if value is None and allow_none:
        return
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` must be {'None or ' if allow_none else ''}a list of names, got {value!r}.")


def check_metadata(name: str, value: Any, kind: type[Mapping[Any, Any]] = Mapping) -> None:
    """Check that ``value`` is None or a ``kind`` (a mapping) that JSON holds exactly (no NaN or Inf, no objects).

    Raises:
        ValueError: naming ``name``.
    """
    if value is None:
        return
    if not isinstance(value, kind):
        raise ValueError(f"`{name}` must be None or a dict of JSON-able values, got {type(value).__name__}.")
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must hold JSON-able, finite values only: {err}") from err


def check_parameters(name: str, value: Any) -> None:
    """Check a tensor selection: ``"all"``, ``"weights"`` or a non-empty list of parameter or module names.

    Raises:
        ValueError: naming ``name``.
    """
    if isinstance(value, str):
        check_choice(name, value, ("all", "weights"))
        return
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            f"`{name}` must be 'all', 'weights' or a non-empty list of parameter/module names, got {value!r}."
        )


def check_int_range(name: str, value: Any, low: int, parts: tuple[str, str] = ("lo", "hi")) -> tuple[int, int]:
    """Check two ints ``(lo, hi)`` with ``low <= lo < hi`` (``parts``: their names in the message); return the tuple.

    Examples:
        >>> check_int_range("k_bounds", [2, 64], low=2)
        (2, 64)
        >>> check_int_range("k_bounds", (64, 2), low=2, parts=("k_min", "k_max"))
        Traceback (most recent call last):
        ValueError: `k_bounds` must be two ints (k_min, k_max) with 2 <= k_min < k_max, got (64, 2).
    """
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not low <= value[0] < value[1]
    ):
        lo, hi = parts
        raise ValueError(f"`{name}` must be two ints ({lo}, {hi}) with {low} <= {lo} < {hi}, got {value!r}.")
    return int(value[0]), int(value[1])
