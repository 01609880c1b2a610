"""Geometric: the bias direction between group means and the groups' principal subspaces.

- The *bias direction* is the difference of the group means (for more than two groups, the
  leading axis of the size-weighted group means). Reported: the distance between the means,
  the share of the total variance that lies along the direction, and the groups' separation
  along it.
- The separation is *cross-fitted*: the direction is estimated on the training folds and
  the held-out samples are projected onto it, so a direction fitted to noise does not look
  like separation. For two groups it is the Cohen's d of the held-out projections (second
  group minus first); for more groups each group is taken against the rest and the largest
  d is reported. The p-value permutes the labels within each test fold and refits the
  directions (the folds' projections are correlated, so a t-test on them would reject too
  often), with the maximum over groups as the statistic.
- *Subspace overlap*: the mean squared cosine of the principal angles between each group's
  top principal components (1 = same subspace, 0 = orthogonal), the lowest over group pairs.
  It is descriptive (it does not change the risk): groups that differ in spread rather than
  in mean show up here.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from shortcut_detect.detectors.embedding_base import (
    DEFAULT_ALPHA,
    EmbeddingDetector,
    GroupedEmbeddings,
    _check_thresholds,
    check_permutations,
    format_p,
    permutation_p_value,
    rate_risk,
    stratified_folds,
    within_fold_permutations,
)

__all__ = ["GeometricDetector", "subspace_overlap"]


def _principal_axes(X: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` principal axes of ``X`` as columns ``(D, k)``."""
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:k].T


def subspace_overlap(A: np.ndarray, B: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the column spaces of ``A`` and ``B``
    (orthonormal ``(D, k)`` bases): ``||A^T B||_F^2 / k``."""
    k = min(A.shape[1], B.shape[1])
    if k == 0:
        return 1.0
    return float(np.sum((A.T @ B) ** 2) / k)


class GeometricDetector(EmbeddingDetector):
    """Bias direction, cross-fitted group separation along it, and subspace overlap.

    Parameters
    ----------
    n_splits:
        Folds for the cross-fitted separation (reduced to the smallest group's size).
    n_permutations:
        Refitting within-fold label permutations for the p-value.
    n_components:
        Principal components per group for the subspace overlap (fewer if a group or the
        dimension is smaller).
    thresholds:
        ``(moderate, high)`` cross-fitted Cohen's d; default ``(0.5, 0.8)``.
    min_group_size:
        Fewer samples in any group: the method reports ``success=False``.
    alpha, random_state:
        See :class:`~shortcut_detect.detectors.embedding_base.EmbeddingDetector`.
    """

    name = "geometric"

    def __init__(
        self,
        *,
        n_splits: int = 5,
        n_components: int = 5,
        n_permutations: int = 1000,
        thresholds: tuple[float, float] = (0.5, 0.8),
        min_group_size: int = 5,
        alpha: float = DEFAULT_ALPHA,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(alpha=alpha, random_state=random_state)
        self.n_splits = n_splits
        self.n_components = n_components
        self.n_permutations = n_permutations
        self.thresholds = thresholds
        self.min_group_size = min_group_size

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        super().validate_params()
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {self.n_splits}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be at least 1, got {self.n_components}")
        if self.min_group_size < 3:
            raise ValueError(f"min_group_size must be at least 3, got {self.min_group_size}")
        check_permutations(self.n_permutations, self.alpha)
        _check_thresholds(self.thresholds, "thresholds")

    def risk_rule(self) -> str:
        """The risk thresholds in words."""
        moderate, high = _check_thresholds(self.thresholds, "thresholds")
        return (
            f"held-out separation along the bias direction d >= {moderate:g} MODERATE, "
            f">= {high:g} HIGH"
        )

    @staticmethod
    def _direction(X: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
        """Unnormalised bias direction: mean difference (2 groups) or leading mean axis."""
        means = np.stack([X[codes == g].mean(axis=0) for g in range(n_groups)])
        if n_groups == 2:
            return means[1] - means[0]
        counts = np.bincount(codes, minlength=n_groups)
        weighted = np.sqrt(counts)[:, None] * (means - X.mean(axis=0))
        _, singular, vt = np.linalg.svd(weighted, full_matrices=False)
        return vt[0] * singular[0] / np.sqrt(len(codes))

    @staticmethod
    def _held_out_d(X: np.ndarray, labels: np.ndarray, target: int, folds: list) -> np.ndarray:
        """Cross-fitted Cohen's d of ``target`` vs the rest, for ``(P, N)`` label vectors.

        Per fold, the direction is the training mean of ``target`` minus the training mean of
        the rest; held-out samples are projected onto it (centred on the training mean).
        """
        n_perm, n = labels.shape
        scores = np.zeros((n_perm, n))
        for train, test in folds:
            x_train = X[train]
            inside = (labels[:, train] == target).astype(float)  # (P, n_train)
            n_in = inside.sum(axis=1, keepdims=True)
            sum_in = inside @ x_train
            total = x_train.sum(axis=0)
            direction = sum_in / n_in - (total - sum_in) / (len(train) - n_in)
            norm = np.linalg.norm(direction, axis=1, keepdims=True)
            unit = np.divide(direction, norm, out=np.zeros_like(direction), where=norm > 0)
            scores[:, test] = unit @ (X[test] - total / len(train)).T
        member = labels == target
        n_a = member.sum(axis=1)
        n_b = n - n_a
        mean_a = np.where(member, scores, 0.0).sum(axis=1) / n_a
        mean_b = np.where(member, 0.0, scores).sum(axis=1) / n_b
        ss_a = np.where(member, (scores - mean_a[:, None]) ** 2, 0.0).sum(axis=1)
        ss_b = np.where(member, 0.0, (scores - mean_b[:, None]) ** 2).sum(axis=1)
        pooled = np.sqrt((ss_a + ss_b) / (n - 2))
        diff = mean_a - mean_b
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pooled > 0, diff / pooled, np.where(diff > 0, np.inf, 0.0))

    def _separation(
        self, data: GroupedEmbeddings, folds: list
    ) -> tuple[list[tuple[str, float]], float, np.ndarray]:
        """Per-target held-out d, the observed max, and its permutation null."""
        targets = [1] if data.n_groups == 2 else list(range(data.n_groups))
        observed = [float(self._held_out_d(data.X, data.codes[None], g, folds)[0]) for g in targets]
        rng = self._rng()
        null = np.empty(int(self.n_permutations))
        chunk = max(1, 2_000_000 // max(data.n_samples + data.n_features, 1))
        for start in range(0, int(self.n_permutations), chunk):
            size = min(chunk, int(self.n_permutations) - start)
            labels = within_fold_permutations(data.codes, folds, size, rng)
            stats = [self._held_out_d(data.X, labels, g, folds) for g in targets]
            null[start : start + size] = np.max(stats, axis=0)
        named = [(data.group_names[g], d) for g, d in zip(targets, observed)]
        return named, max(observed), null

    def _analyse(self, data: GroupedEmbeddings) -> tuple[dict, str, str, dict]:
        data.require_group_size(self.min_group_size, "geometric")
        thresholds = _check_thresholds(self.thresholds, "thresholds")
        X, codes, n_groups = data.X, data.codes, data.n_groups
        centred = X - X.mean(axis=0)
        direction = self._direction(X, codes, n_groups)
        magnitude = float(np.linalg.norm(direction))
        unit = direction / magnitude if magnitude > 0 else np.zeros_like(direction)
        projection = centred @ unit
        total_variance = float(centred.var(axis=0).sum())
        variance_explained = float(projection.var() / total_variance) if total_variance > 0 else 0.0

        folds = stratified_folds(codes, self.n_splits, self.random_state)
        separations, effect, null = self._separation(data, folds)
        best_group = max(separations, key=lambda item: item[1])[0]
        p_value = permutation_p_value(effect, null)
        risk = rate_risk(p_value, effect, thresholds, self.alpha)

        k = int(min(self.n_components, data.n_features, data.counts.min() - 1))
        axes = [_principal_axes(X[codes == g], k) for g in range(n_groups)]
        pairs = {
            f"{data.group_names[i]} vs {data.group_names[j]}": subspace_overlap(axes[i], axes[j])
            for i, j in combinations(range(n_groups), 2)
        }
        min_overlap = float(min(pairs.values()))
        # Two random k-dimensional subspaces of R^D overlap k / D on average.
        chance_overlap = k / data.n_features

        metrics: dict[str, Any] = {
            "separation_d": float(effect),
            "effect_size_d": float(effect),
            "p_value": float(p_value),
            "bias_magnitude": magnitude,
            "variance_explained": variance_explained,
            "subspace_overlap": min_overlap,
            "subspace_overlap_chance": chance_overlap,
        }
        names = data.group_names
        along = (
            f"group {names[1]!r} vs {names[0]!r}"
            if n_groups == 2
            else f"group {best_group!r} vs the rest"
        )
        finding = (
            f"Held-out separation along the bias direction d = {effect:.2f} ({along}, "
            f"{format_p(p_value, int(self.n_permutations))}); the direction holds "
            f"{variance_explained:.1%} of the variance; principal subspace overlap "
            f"{min_overlap:.2f} (chance {chance_overlap:.2f})"
        )
        details = {
            "bias_direction": unit.tolist() if unit.size <= 4096 else None,
            "per_group_separation": {name: float(d) for name, d in separations},
            "p_value_test": "within-fold label permutation with refitting",
            "n_permutations": int(self.n_permutations),
            "subspace_overlap_pairs": pairs,
            "subspace_components": k,
            "n_splits": len(folds),
            "thresholds_d": list(thresholds),
        }
        return metrics, risk, finding, details
