"""Intervals and p-values for intervention effects: percentile bootstrap, sign-flip test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shortcut_detect.common import nan_to_none

__all__ = ["Estimate", "bootstrap_interval", "estimate", "sign_flip_p_value"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval (and, for paired effects, a p-value).

    Attributes
    ----------
    value:
        The mean over samples (NaN when there are none).
    low, high:
        Percentile bootstrap interval of the mean at ``confidence``.
    n:
        Samples the mean is over.
    p_value:
        One-sided p-value of "the mean is above 0" (paired sign-flip permutation test);
        ``None`` where no test was run.
    """

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        return {
            "value": nan_to_none(self.value),
            "low": nan_to_none(self.low),
            "high": nan_to_none(self.high),
            "n": self.n,
            "confidence": self.confidence,
            "p_value": nan_to_none(self.p_value),
        }

    def text(self, percent: bool = False) -> str:
        """``"0.71 [0.64, 0.78]"`` (or ``"71% [64-78%]"``)."""
        if np.isnan(self.value):
            return "n/a"
        if percent:
            return f"{self.value:.0%} [{self.low:.0%}-{self.high:.0%}]"
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _values(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[~np.isnan(array)]


def bootstrap_interval(
    values: Any, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN entries ignored).

    ``(nan, nan)`` for no values; a single value gives a zero-width interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    array = _values(values)
    if array.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // array.size)
    for start in range(0, n_bootstrap, chunk):
        count = min(chunk, n_bootstrap - start)
        means[start : start + count] = array[rng.integers(0, array.size, (count, array.size))].mean(
            axis=1
        )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def sign_flip_p_value(differences: Any, n_permutations: int = 2000, seed: int = 0) -> float:
    """One-sided p-value that paired ``differences`` have a positive mean.

    Under the null hypothesis each difference is as likely to have either sign (the region
    and the control are exchangeable), so the observed mean is compared with the means of
    randomly sign-flipped differences: ``p = (1 + #{flipped >= observed}) / (1 + B)``,
    never below ``1 / (1 + B)``. NaN for no differences.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    array = _values(differences)
    if array.size == 0:
        return float("nan")
    observed = array.mean()
    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = max(1, 2_000_000 // array.size)
    tolerance = 1e-12 * max(1.0, float(np.abs(array).max()))
    for start in range(0, n_permutations, chunk):
        count = min(chunk, n_permutations - start)
        signs = rng.integers(0, 2, (count, array.size)) * 2 - 1
        exceed += int(((signs * array).mean(axis=1) >= observed - tolerance).sum())
    return (1 + exceed) / (1 + n_permutations)


def estimate(
    values: Any,
    *,
    paired_test: bool = False,
    n_bootstrap: int = 2000,
    n_permutations: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The mean of ``values`` with its bootstrap interval, and with ``paired_test`` the
    sign-flip p-value of "mean > 0"."""
    array = _values(values)
    low, high = bootstrap_interval(array, n_bootstrap, confidence, seed)
    p_value = sign_flip_p_value(array, n_permutations, seed + 1) if paired_test else None
    value = float(array.mean()) if array.size else float("nan")
    return Estimate(value, low, high, int(array.size), confidence, p_value)
