"""Strict checks of the library's arguments: numbers are numbers (not strings, not bools), flags are bools.

Every check names the argument in its message. A value of the wrong *type* raises
``ArgumentTypeError``, which is both a ``TypeError`` and a ``ValueError`` (callers that catch
``ValueError`` for a bad setting keep working); a value of the right type out of its range raises
``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["ArgumentTypeError", "check_choice", "check_flag", "check_int", "check_number"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a string or a bool where a number belongs, a number where a flag does."""


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_flag(name: str, value: Any) -> bool:
    """``value`` itself when it is a bool; an ``ArgumentTypeError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool (True or False), got {_shown(value)}")
    return value


def check_int(name: str, value: Any, low: int = 1) -> int:
    """An integer ``>= low`` (a bool or a float is refused, even ``3.0``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer >= {low}, got {_shown(value)}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    low_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """A real number (not a bool, not a string), not NaN, finite unless ``allow_inf``, and ``> low`` when
    ``low_open`` else ``>= low``; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {_shown(value)}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        bound = "positive" if low == 0 and low_open else f"{'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """A name among ``choices`` (a non-string is an ``ArgumentTypeError``)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be one of {sorted(choices)}, got {_shown(value)}")
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; {name} must be one of {sorted(choices)}")
    return value
