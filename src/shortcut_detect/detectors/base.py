"""The one small interface every detector shares (scikit-learn style).

A detector stores its parameters in ``__init__`` exactly as given, checks them at the start
of ``fit(...)`` (which returns ``self``), and reports with ``get_report()``: a plain dict,
JSON-serialisable::

    {
        "method": "probe",            # short name
        "success": True,              # False if it could not run (then "error" says why)
        "metrics": {...},             # the numbers behind the finding
        "risk": "LOW" | "MODERATE" | "HIGH" | "UNKNOWN",
        "finding": "one line a person can read",
        "details": {...},             # larger or per-sample material (optional)
    }

``get_params`` / ``set_params`` follow scikit-learn, so ``sklearn.base.clone`` copies a
detector with the same settings.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, TypeVar

from shortcut_detect.common.risk import Risk

__all__ = ["RISK_LEVELS", "BaseDetector", "ParamsMixin", "failed_report"]

#: The levels a detector that ran may report (``Risk.UNKNOWN`` is for one that could not).
RISK_LEVELS = (Risk.LOW, Risk.MODERATE, Risk.HIGH)


def failed_report(method: str, error: str) -> dict[str, Any]:
    """The report of a detector that could not run."""
    return {
        "method": method,
        "success": False,
        "error": error,
        "metrics": {},
        "risk": Risk.UNKNOWN.value,
        "finding": f"{method} could not run: {error}",
        "details": {},
    }


_P = TypeVar("_P", bound="ParamsMixin")


class ParamsMixin:
    """scikit-learn's ``get_params`` / ``set_params``, read from the ``__init__`` signature:
    every ``__init__`` argument must be stored unchanged under its own name."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, parameter in signature.parameters.items()
            if name != "self"
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` arguments, as given (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self: _P, **params: Any) -> _P:
        """Change ``__init__`` arguments; they are checked at the next ``fit``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {name!r}; valid: {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self


class BaseDetector(ParamsMixin, ABC):
    """Base class: ``fit(...) -> self``, ``get_report() -> dict``, scikit-learn parameters.

    Subclasses take every setting as an ``__init__`` argument stored under its own name and
    unchanged, and check them in :meth:`validate_params` (called first thing in ``fit``).
    """

    name: str = "detector"

    def __init__(self) -> None:
        """No settings (subclasses take theirs as keyword arguments)."""
        return None

    def validate_params(self) -> None:
        """Raise ``ValueError`` (naming the parameter) for an invalid setting.

        ``fit`` calls it first; :class:`~shortcut_detect.detectors.ShortcutDetector` calls it
        for every method before running any. The base class accepts everything.
        """
        return None

    @abstractmethod
    def fit(self, *args: Any, **kwargs: Any) -> BaseDetector:
        """Learn from the data; store the report; return ``self``."""

    def get_report(self) -> dict[str, Any]:
        """The report dict (see module docstring). Raises if ``fit`` was not called."""
        report = getattr(self, "report_", None)
        if report is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) first")
        return report

    def _make_report(
        self,
        metrics: dict[str, Any],
        risk: str | Risk,
        finding: str,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if risk not in RISK_LEVELS:
            levels = ", ".join(level.value for level in RISK_LEVELS)
            raise ValueError(f"risk must be one of {levels}, got {risk!r}")
        self.report_ = {
            "method": self.name,
            "success": True,
            "metrics": metrics,
            "risk": Risk.parse(risk).value,
            "finding": finding,
            "details": details or {},
        }
        return self.report_
