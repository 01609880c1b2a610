"""Statistical: per-dimension group-difference tests with Benjamini-Hochberg correction.

Every embedding dimension is tested for a difference between the groups: Welch's t-test or
Mann-Whitney U for two groups, one-way ANOVA or Kruskal-Wallis for more (``test``). The
p-values are adjusted with Benjamini-Hochberg; dimensions with adjusted p below ``fdr`` are
"significant".

The method's test of "no group information anywhere" is the smallest BH-adjusted p-value
(Simes' global test). Effect sizes are Cohen's d per dimension (pooled SD) for two groups and
``2 * sqrt(eta^2 / (1 - eta^2))`` (twice Cohen's f, equal to d for two equal groups) for more.
The risk uses the largest effect among significant dimensions, and rates a significant share
of at least ``widespread_share`` of the dimensions at least MODERATE (many small differences
add up to strong group information).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from shortcut_detect.common.risk import Risk
from shortcut_detect.detectors.embedding_base import (
    DEFAULT_ALPHA,
    EmbeddingDetector,
    GroupedEmbeddings,
    _check_thresholds,
    rate_risk,
)

__all__ = ["StatisticalDetector", "benjamini_hochberg"]

TESTS = ("parametric", "nonparametric")


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (the same as
    ``scipy.stats.false_discovery_control(p, method="bh")``)."""
    p = np.asarray(p_values, dtype=float)
    try:
        from scipy.stats import false_discovery_control
    except ImportError:  # scipy < 1.11
        n = p.size
        order = np.argsort(p)
        scaled = p[order] * n / np.arange(1, n + 1)
        adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
        out = np.empty(n)
        out[order] = np.clip(adjusted, 0.0, 1.0)
        return out
    return false_discovery_control(p, method="bh")


def _effect_sizes(X: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-dimension effect on the d scale (signed Cohen's d, group 1 minus group 0, for
    two groups; ``2 * Cohen's f`` for more)."""
    counts = np.bincount(codes, minlength=n_groups).astype(float)
    means = np.stack([X[codes == g].mean(axis=0) for g in range(n_groups)])
    within = sum(((X[codes == g] - means[g]) ** 2).sum(axis=0) for g in range(n_groups))
    if n_groups == 2:
        pooled_sd = np.sqrt(within / max(counts.sum() - 2, 1))
        diff = means[1] - means[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(
                pooled_sd > 0, diff / pooled_sd, np.where(diff != 0, np.inf * np.sign(diff), 0.0)
            )
        return d
    grand = X.mean(axis=0)
    between = (counts[:, None] * (means - grand) ** 2).sum(axis=0)
    total = between + within
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = np.where(total > 0, between / total, 0.0)
        f = np.where(eta2 < 1, np.sqrt(eta2 / (1 - eta2)), np.inf)
    return 2.0 * f


def _p_values(X: np.ndarray, codes: np.ndarray, n_groups: int, test: str) -> np.ndarray:
    from scipy import stats

    parts = [X[codes == g] for g in range(n_groups)]
    # Dimensions that are constant within groups are handled by the caller; scipy's
    # precision-loss warnings about them would only be noise.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if n_groups == 2 and test == "parametric":
            p = stats.ttest_ind(parts[0], parts[1], axis=0, equal_var=False).pvalue
        elif n_groups == 2:
            p = stats.mannwhitneyu(parts[0], parts[1], axis=0, alternative="two-sided").pvalue
        elif test == "parametric":
            p = stats.f_oneway(*parts, axis=0).pvalue
        else:
            p = stats.kruskal(*parts, axis=0).pvalue
    return np.asarray(p, dtype=float)


class StatisticalDetector(EmbeddingDetector):
    """Per-dimension group tests with Benjamini-Hochberg correction.

    Parameters
    ----------
    test:
        ``"parametric"`` (Welch t-test / one-way ANOVA, default) or ``"nonparametric"``
        (Mann-Whitney U / Kruskal-Wallis).
    fdr:
        False discovery rate for counting significant dimensions (default 0.05).
    thresholds:
        ``(moderate, high)`` on the largest significant |d|; default ``(0.5, 0.8)``
        (Cohen's medium and large).
    widespread_share:
        A significant share of dimensions at least this large rates at least MODERATE.
    top_k:
        How many of the most different dimensions the report lists.
    min_group_size:
        Fewer samples in any group: the method reports ``success=False``.
    alpha, random_state:
        See :class:`~shortcut_detect.detectors.embedding_base.EmbeddingDetector`.
    """

    name = "statistical"

    def __init__(
        self,
        test: str = "parametric",
        *,
        fdr: float = 0.05,
        thresholds: tuple[float, float] = (0.5, 0.8),
        widespread_share: float = 0.25,
        top_k: int = 10,
        min_group_size: int = 3,
        alpha: float = DEFAULT_ALPHA,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(alpha=alpha, random_state=random_state)
        self.test = test
        self.fdr = fdr
        self.thresholds = thresholds
        self.widespread_share = widespread_share
        self.top_k = top_k
        self.min_group_size = min_group_size

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        super().validate_params()
        if self.test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}, got {self.test!r}")
        if not 0 < self.fdr < 1:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr}")
        if not 0 < self.widespread_share <= 1:
            raise ValueError(f"widespread_share must be in (0, 1], got {self.widespread_share}")
        if self.min_group_size < 2:
            raise ValueError(f"min_group_size must be at least 2, got {self.min_group_size}")
        _check_thresholds(self.thresholds, "thresholds")

    def risk_rule(self) -> str:
        """The risk thresholds in words."""
        moderate, high = _check_thresholds(self.thresholds, "thresholds")
        return (
            f"largest |d| among significant dimensions >= {moderate:g} MODERATE (or at least "
            f"{self.widespread_share:.0%} of dimensions significant), >= {high:g} HIGH"
        )

    def _analyse(self, data: GroupedEmbeddings) -> tuple[dict, str, str, dict]:
        data.require_group_size(self.min_group_size, "statistical")
        thresholds = _check_thresholds(self.thresholds, "thresholds")
        X, codes, n_groups = data.X, data.codes, data.n_groups
        constant = X.max(axis=0) == X.min(axis=0)
        tested = np.flatnonzero(~constant)
        d = _effect_sizes(X, codes, n_groups)
        p = np.ones(data.n_features)
        if tested.size:
            p_tested = _p_values(X[:, tested], codes, n_groups, self.test)
            # NaN only when every group is constant in that dimension: then a difference
            # in the constants separates the groups perfectly.
            separated = ~np.isfinite(p_tested)
            p_tested[separated] = np.where(np.isinf(d[tested][separated]), 0.0, 1.0)
            p[tested] = p_tested
        p_adjusted = np.ones(data.n_features)
        if tested.size:
            p_adjusted[tested] = benjamini_hochberg(p[tested])
        significant = p_adjusted < self.fdr
        n_significant = int(significant.sum())
        share = n_significant / max(tested.size, 1)
        global_p = float(p_adjusted.min())
        abs_d = np.abs(d)
        max_d_significant = float(abs_d[significant].max()) if n_significant else 0.0
        risk = rate_risk(global_p, max_d_significant, thresholds, self.alpha)
        if risk == Risk.LOW and global_p < self.alpha and share >= self.widespread_share:
            risk = Risk.MODERATE
        order = np.argsort(-abs_d, kind="stable")[: int(self.top_k)]
        means = np.stack([X[codes == g].mean(axis=0) for g in range(n_groups)])
        top = [
            {
                "dimension": int(j),
                "effect_size_d": float(d[j]),
                "p_value": float(p[j]),
                "p_adjusted": float(p_adjusted[j]),
                "significant": bool(significant[j]),
                "group_means": dict(zip(data.group_names, map(float, means[:, j]))),
            }
            for j in order
        ]
        test_name = {
            (True, "parametric"): "Welch t-test",
            (True, "nonparametric"): "Mann-Whitney U",
            (False, "parametric"): "one-way ANOVA",
            (False, "nonparametric"): "Kruskal-Wallis",
        }[(n_groups == 2, self.test)]
        metrics: dict[str, Any] = {
            "n_significant": n_significant,
            "share_significant": float(share),
            "n_dimensions_tested": int(tested.size),
            "max_effect_size_d": float(abs_d.max()),
            "max_significant_effect_size_d": max_d_significant,
            "mean_abs_effect_size_d": float(abs_d[tested].mean()) if tested.size else 0.0,
            "min_p_adjusted": global_p,
            "p_value": global_p,
        }
        finding = (
            f"{n_significant} of {tested.size} dimensions differ between groups "
            f"({test_name}, BH FDR {self.fdr:g}); largest significant |d| = "
            f"{max_d_significant:.2f} (min adjusted p={global_p:.3g})"
        )
        details = {
            "test": test_name,
            "fdr": float(self.fdr),
            "n_constant_dimensions": int(constant.sum()),
            "thresholds_d": list(thresholds),
            "widespread_share": float(self.widespread_share),
            "top_dimensions": top,
        }
        return metrics, risk, finding, details
