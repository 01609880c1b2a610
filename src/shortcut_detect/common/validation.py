"""Checks of numeric parameters, with the error message every public API gives."""

from __future__ import annotations

import math
import numbers

__all__ = ["positive_int", "positive_number"]


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (not a bool), else a ``ValueError``.

    Numpy integers are accepted; floats are refused even when whole (``2.0``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_number(name: str, value: object) -> float:
    """``value`` as a ``float`` if it is a finite real number > 0 (not a bool), else a
    ``ValueError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
