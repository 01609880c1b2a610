"""The one small interface every detector shares (scikit-learn style).

A detector validates its parameters in ``__init__``, learns in ``fit(...)`` (returns
``self``), and reports with ``get_report()``: a plain dict, JSON-serialisable::

    {
        "method": "probe",            # short name
        "success": True,              # False if it could not run (then "error" says why)
        "metrics": {...},             # the numbers behind the finding
        "risk": "LOW" | "MODERATE" | "HIGH" | "UNKNOWN",
        "finding": "one line a person can read",
        "details": {...},             # larger or per-sample material (optional)
    }
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["RISK_LEVELS", "BaseDetector", "failed_report"]

RISK_LEVELS = ("LOW", "MODERATE", "HIGH")


def failed_report(method: str, error: str) -> dict[str, Any]:
    """The report of a detector that could not run."""
    return {
        "method": method,
        "success": False,
        "error": error,
        "metrics": {},
        "risk": "UNKNOWN",
        "finding": f"{method} could not run: {error}",
        "details": {},
    }


class BaseDetector(ABC):
    """Base class: ``fit(...) -> self``, ``get_report() -> dict``."""

    name: str = "detector"

    def __init__(self) -> None:
        self.report_: dict[str, Any] | None = None

    @abstractmethod
    def fit(self, *args: Any, **kwargs: Any) -> BaseDetector:
        """Learn from the data; store the report; return ``self``."""

    def get_report(self) -> dict[str, Any]:
        """The report dict (see module docstring). Raises if ``fit`` was not called."""
        if self.report_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) first")
        return self.report_

    def _make_report(
        self,
        metrics: dict[str, Any],
        risk: str,
        finding: str,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if risk not in RISK_LEVELS:
            raise ValueError(f"risk must be one of {RISK_LEVELS}, got {risk!r}")
        self.report_ = {
            "method": self.name,
            "success": True,
            "metrics": metrics,
            "risk": risk,
            "finding": finding,
            "details": details or {},
        }
        return self.report_
