"""Risk levels, in one place, with their order."""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["Risk"]


class Risk(str, enum.Enum):
    """How strongly the evidence points at a shortcut.

    A ``str`` enum, so ``Risk.HIGH == "HIGH"`` and it serialises as its name. ``UNKNOWN``
    (no evidence could be computed) sorts below ``LOW``.
    """

    UNKNOWN = "UNKNOWN"
    LOW = "LOW"
    MODERATE = "MODERATE"
    HIGH = "HIGH"

    @property
    def rank(self) -> int:
        """-1 for UNKNOWN, then 0, 1, 2 from LOW to HIGH."""
        return _RANK[self]

    @classmethod
    def parse(cls, value: str | Risk | None) -> Risk:
        """A level from its name (case-insensitive); ``None`` is UNKNOWN."""
        if value is None:
            return cls.UNKNOWN
        if isinstance(value, Risk):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            names = ", ".join(level.value for level in cls)
            raise ValueError(f"unknown risk level {value!r}; expected one of {names}") from None

    @classmethod
    def highest(cls, levels: Iterable[str | Risk | None]) -> Risk:
        """The highest of ``levels`` (UNKNOWN when there are none)."""
        return max(
            (cls.parse(level) for level in levels), key=_RANK.__getitem__, default=cls.UNKNOWN
        )

    def __lt__(self, other: object) -> bool:
        if isinstance(other, (Risk, str)):
            return self.rank < Risk.parse(other).rank
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, (Risk, str)):
            return self.rank <= Risk.parse(other).rank
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, (Risk, str)):
            return self.rank > Risk.parse(other).rank
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, (Risk, str)):
            return self.rank >= Risk.parse(other).rank
        return NotImplemented

    def __str__(self) -> str:
        return self.value


_RANK = {Risk.UNKNOWN: -1, Risk.LOW: 0, Risk.MODERATE: 1, Risk.HIGH: 2}
