"""Probe: how well a simple classifier predicts the group from the embeddings.

A probe is cross-validated with shuffled stratified folds on standardised features. Its
out-of-fold scores give the accuracy (against the majority-class baseline), the balanced
accuracy and the ROC-AUC (macro one-vs-rest for more than two groups).

Probes (``model``):

- ``"linear"`` (default): ridge least-squares on one-hot group targets, i.e. a regularised
  linear discriminant; the ridge strength is chosen inside each training fold by
  leave-one-out error (nested, so the out-of-fold AUC is not optimistic).
- ``"logistic"``: L2 logistic regression (scikit-learn), strength ``C``.
- ``"mlp"``: one hidden layer (scikit-learn ``MLPClassifier``, L-BFGS, at most 200
  iterations). Each refit costs a full training, so expect ``n_splits * (n_permutations + 1)``
  trainings (about a minute for 100 permutations of a few hundred samples).

The p-value is a permutation test *with refitting*: group labels are permuted within each
test fold (keeping every fold's group counts), the probe is refitted on the permuted training
labels and the out-of-fold AUC recomputed. Cross-validated scores of different folds are
correlated (each fold's model is trained on the other folds), so testing the pooled
out-of-fold scores as if independent, or permuting them without refitting, rejects too
often; refitting does not. For the linear probe every out-of-fold prediction is linear in
the training labels (for each candidate ridge strength), so 1000 refits, including the
choice of strength, cost a few matrix products; the logistic and MLP probes refit
``n_permutations`` times per fold (default 100, which is slower).

Effect size: the AUC as an equivalent Cohen's d, ``d = sqrt(2) * Phi^-1(AUC)`` (exact for two
Gaussian groups with equal covariance), so AUC 0.64 is d = 0.5 and AUC 0.71 is d = 0.8.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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

__all__ = ["ProbeDetector", "auc_to_d", "d_to_auc", "macro_auc"]

PROBE_MODELS = ("linear", "logistic", "mlp")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
Folds = list[tuple[np.ndarray, np.ndarray]]


def auc_to_d(auc: float) -> float:
    """Equivalent Cohen's d of an AUC: ``sqrt(2) * Phi^-1(AUC)`` (AUC clipped to (0, 1))."""
    from scipy.stats import norm

    return float(np.sqrt(2.0) * norm.ppf(np.clip(auc, 1e-6, 1 - 1e-6)))


def d_to_auc(d: float) -> float:
    """The AUC of two unit-variance Gaussians ``d`` apart: ``Phi(d / sqrt(2))``."""
    from scipy.stats import norm

    return float(norm.cdf(d / np.sqrt(2.0)))


def macro_auc(scores: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Mann-Whitney AUC, many label vectors at once.

    Parameters
    ----------
    scores:
        ``(P, N, G)`` scores per class (``G`` columns) for ``P`` repetitions.
    labels:
        ``(P, N)`` codes ``0..G-1``; each class present in every row.
    n_groups:
        ``G``. For two groups the AUC of column 1; otherwise the macro one-vs-rest mean.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` AUCs, equal to ``sklearn.metrics.roc_auc_score`` on each repetition.
    """
    from scipy.stats import rankdata

    columns = [1] if n_groups == 2 else list(range(n_groups))
    n = labels.shape[1]
    aucs = []
    for column in columns:
        ranks = rankdata(scores[:, :, column], axis=1)
        positive = labels == column
        n_pos = positive.sum(axis=1)
        rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
        aucs.append((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos)))
    return np.mean(aucs, axis=0)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return (train - mean) / scale, (test - mean) / scale


class _RidgeProbe:
    """Cross-validated ridge probe whose predictions are linear in the training labels.

    Per outer fold, on standardised features with the thin SVD ``X_train = U S V^T``:
    the ridge solution for strength ``lam`` predicts ``mean(y) + X_test V diag(S / (S^2 +
    lam)) U^T (y - mean(y))`` on the test fold and has leave-one-out residuals
    ``(y - fitted) / (1 - h)`` on the training fold (``h`` the leverages, including the
    intercept's ``1 / n``). The strength is chosen per fold and per label vector by the
    smallest leave-one-out squared error (as ``sklearn.linear_model.RidgeCV``), so every
    permuted label vector repeats the choice, and a whole permutation test is a few matrix
    products.
    """

    def __init__(self, X: np.ndarray, folds: Folds, ridges: Sequence[float]) -> None:
        self.folds = folds
        self.ridges = np.asarray(ridges, dtype=float)
        self.parts = []
        for train, test in folds:
            x_train, x_test = _standardise(X[train], X[test])
            u, s, vt = np.linalg.svd(x_train, full_matrices=False)
            keep = s > s[0] * 1e-10 if s.size and s[0] > 0 else np.zeros(s.size, bool)
            u, s, vt = u[:, keep], s[keep], vt[keep]
            lams = self.ridges[:, None] * len(train)
            shrink = s**2 / (s**2 + lams)  # (L, r): the hat matrix's eigenvalues
            leverage = 1.0 / len(train) + (u**2) @ shrink.T  # (n_train, L)
            self.parts.append(
                {
                    "u": u,
                    "projected_test": x_test @ vt.T,  # (n_test, r)
                    "shrink": shrink,
                    "coef": s / (s**2 + lams),  # (L, r)
                    "leverage": np.minimum(leverage, 1.0 - 1e-12),
                }
            )

    def predict(self, labels: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold predictions ``(P, N, G)`` for ``(P, N)`` label vectors, and the index
        of the chosen strength ``(P, n_folds)``."""
        n_perm, n = labels.shape
        # Two groups: the class-0 target is 1 minus the class-1 target, so is its prediction.
        columns = [1] if n_groups == 2 else list(range(n_groups))
        k = len(columns)
        targets = np.stack([labels == c for c in columns], axis=-1).astype(float)  # (P, N, K)
        out = np.empty((n_perm, n, k))
        chosen = np.zeros((n_perm, len(self.folds)), dtype=np.int64)
        for fold, ((train, test), part) in enumerate(zip(self.folds, self.parts)):
            y_train = targets[:, train]
            mean = y_train.mean(axis=1, keepdims=True)  # (P, 1, K)
            centred = (y_train - mean).transpose(1, 0, 2).reshape(len(train), -1)  # (n, P*K)
            rotated = part["u"].T @ centred  # (r, P*K)
            n_ridges = len(self.ridges)
            predictions = np.empty((n_ridges, len(test), n_perm * k))
            errors = np.zeros((n_ridges, n_perm))
            for index in range(n_ridges):
                if n_ridges > 1:
                    fitted = part["u"] @ (part["shrink"][index][:, None] * rotated)
                    loo = (centred - fitted) / (1.0 - part["leverage"][:, index])[:, None]
                    errors[index] = (loo**2).reshape(len(train), n_perm, k).sum(axis=(0, 2))
                predictions[index] = part["projected_test"] @ (
                    part["coef"][index][:, None] * rotated
                )
            best = errors.argmin(axis=0)  # (P,)
            chosen[:, fold] = best
            per_perm = predictions.reshape(n_ridges, len(test), n_perm, k)
            picked = per_perm[best, :, np.arange(n_perm), :]  # (P, n_test, K)
            out[:, test] = mean + picked
        if n_groups == 2:
            out = np.concatenate([1.0 - out, out], axis=-1)
        return out, chosen


class ProbeDetector(EmbeddingDetector):
    """Cross-validated probe predicting the group from the embeddings.

    Parameters
    ----------
    model:
        ``"linear"`` (default, ridge), ``"logistic"`` or ``"mlp"``; see the module notes.
    n_splits:
        Stratified folds (reduced to the smallest group's size if that is smaller).
    n_permutations:
        Refitting permutations for the p-value; ``None``: 1000 for the linear probe, 100 for
        the others. The smallest p-value is ``1 / (n_permutations + 1)``, so keep it above
        ``1 / alpha``.
    ridge:
        Ridge strength of the linear probe per training sample (the penalty is
        ``ridge * n_train`` on standardised features), or several: then each fold picks the
        one with the smallest leave-one-out error on its training part. Default
        ``(1e-4, 1e-3, 1e-2, 0.1, 1, 10)``: embeddings of neural networks are strongly
        correlated, and a fixed strong penalty would hide group information that lies in
        low-variance directions.
    C:
        Inverse L2 strength of the logistic probe.
    hidden_units:
        Width of the MLP probe.
    thresholds:
        ``(moderate, high)`` equivalent Cohen's d of the AUC; default ``(0.5, 0.8)``, i.e.
        AUC 0.64 / 0.71.
    min_group_size:
        Fewer samples in any group: the method reports ``success=False``.
    alpha, random_state:
        See :class:`~shortcut_detect.detectors.embedding_base.EmbeddingDetector`.
    """

    name = "probe"

    def __init__(
        self,
        model: str = "linear",
        *,
        n_splits: int = 5,
        n_permutations: int | None = None,
        ridge: float | Sequence[float] = RIDGE_GRID,
        C: float = 1.0,
        hidden_units: int = 64,
        thresholds: tuple[float, float] = (0.5, 0.8),
        min_group_size: int = 5,
        alpha: float = DEFAULT_ALPHA,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(alpha=alpha, random_state=random_state)
        self.model = model
        self.n_splits = n_splits
        self.n_permutations = n_permutations
        self.ridge = ridge
        self.C = C
        self.hidden_units = hidden_units
        self.thresholds = thresholds
        self.min_group_size = min_group_size

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        super().validate_params()
        if self.model not in PROBE_MODELS:
            raise ValueError(f"model must be one of {PROBE_MODELS}, got {self.model!r}")
        if self.n_splits < 2:
            raise ValueError(f"n_splits must be at least 2, got {self.n_splits}")
        ridges = self._ridges()
        if not ridges or min(ridges) <= 0 or self.C <= 0:
            raise ValueError(
                f"ridge strengths and C must be positive, got ridge={self.ridge}, C={self.C}"
            )
        if self.min_group_size < 2:
            raise ValueError(f"min_group_size must be at least 2, got {self.min_group_size}")
        check_permutations(self._n_permutations(), self.alpha)
        _check_thresholds(self.thresholds, "thresholds")

    def _ridges(self) -> tuple[float, ...]:
        """The ridge strengths as a tuple (one or several)."""
        ridge = self.ridge
        return (float(ridge),) if np.isscalar(ridge) else tuple(float(r) for r in ridge)

    def _n_permutations(self) -> int:
        """``n_permutations``, or its default for the probe model (1000 linear, 100 others)."""
        if self.n_permutations is None:
            return 1000 if self.model == "linear" else 100
        return int(self.n_permutations)

    def risk_rule(self) -> str:
        """The risk thresholds in words."""
        moderate, high = _check_thresholds(self.thresholds, "thresholds")
        return (
            f"out-of-fold AUC >= {d_to_auc(moderate):.2f} (d >= {moderate:g}) MODERATE, "
            f">= {d_to_auc(high):.2f} (d >= {high:g}) HIGH"
        )

    # -- sklearn probes ------------------------------------------------------------------
    def _estimator(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.model == "mlp":
            # L-BFGS: for probe-sized data it converges in a fraction of Adam's time.
            classifier = MLPClassifier(
                hidden_layer_sizes=(int(self.hidden_units),),
                solver="lbfgs",
                alpha=1e-2,
                max_iter=200,
                random_state=self.random_state,
            )
        else:
            classifier = LogisticRegression(C=float(self.C), max_iter=2000)
        return make_pipeline(StandardScaler(), classifier)

    def _sklearn_scores(
        self, X: np.ndarray, labels: np.ndarray, folds: Folds, n_groups: int
    ) -> np.ndarray:
        scores = np.zeros((len(labels), n_groups))
        for train, test in folds:
            estimator = self._estimator().fit(X[train], labels[train])
            scores[test] = estimator.predict_proba(X[test])
        return scores

    # -- the analysis --------------------------------------------------------------------
    def _scores_and_null(
        self, data: GroupedEmbeddings, folds: Folds
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Observed out-of-fold scores ``(N, G)`` and the permutation null of the AUC."""
        rng = self._rng()
        G = data.n_groups
        notes: list[str] = []
        if self.model == "linear":
            ridges = self._ridges()
            probe = _RidgeProbe(data.X, folds, ridges)
            scores, chosen = probe.predict(data.codes[None], G)
            scores = scores[0]
            self.ridge_per_fold_ = [ridges[i] for i in chosen[0]]
            null = np.empty(self._n_permutations())
            chunk = max(1, 4_000_000 // max(data.n_samples * G, 1))
            for start in range(0, self._n_permutations(), chunk):
                size = min(chunk, self._n_permutations() - start)
                labels = within_fold_permutations(data.codes, folds, size, rng)
                null[start : start + size] = macro_auc(probe.predict(labels, G)[0], labels, G)
            return scores, null, notes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = self._sklearn_scores(data.X, data.codes, folds, G)
            labels = within_fold_permutations(data.codes, folds, self._n_permutations(), rng)
            null = np.array(
                [
                    macro_auc(self._sklearn_scores(data.X, row, folds, G)[None], row[None], G)[0]
                    for row in labels
                ]
            )
        notes.extend(sorted({str(w.message).split("\n")[0] for w in caught}))
        return scores, null, notes

    def _within_label_auc(self, data: GroupedEmbeddings, scores: np.ndarray) -> float | None:
        """AUC inside each task label (size-weighted mean), where every group is present."""
        if data.labels is None:
            return None
        values, weights = [], []
        for label in np.unique(data.labels):
            inside = data.labels == label
            codes = data.codes[inside]
            if len(np.unique(codes)) < data.n_groups:
                continue
            values.append(macro_auc(scores[inside][None], codes[None], data.n_groups)[0])
            weights.append(inside.sum())
        if not values:
            return None
        return float(np.average(values, weights=weights))

    def _analyse(self, data: GroupedEmbeddings) -> tuple[dict, str, str, dict]:
        data.require_group_size(self.min_group_size, "probe")
        thresholds = _check_thresholds(self.thresholds, "thresholds")
        self.ridge_per_fold_: list[float] = []
        folds = stratified_folds(data.codes, self.n_splits, self.random_state)
        scores, null, notes = self._scores_and_null(data, folds)
        auc = float(macro_auc(scores[None], data.codes[None], data.n_groups)[0])
        p_value = permutation_p_value(auc, null)
        predicted = scores.argmax(axis=1)
        accuracy = float(np.mean(predicted == data.codes))
        recalls = [float(np.mean(predicted[data.codes == g] == g)) for g in range(data.n_groups)]
        balanced_accuracy = float(np.mean(recalls))
        baseline = float(data.counts.max() / data.n_samples)
        effect = auc_to_d(auc)
        risk = rate_risk(p_value, effect, thresholds, self.alpha)
        within = self._within_label_auc(data, scores)
        metrics: dict[str, Any] = {
            "accuracy": accuracy,
            "balanced_accuracy": balanced_accuracy,
            "baseline_accuracy": baseline,
            "auc": auc,
            "effect_size_d": effect,
            "p_value": float(p_value),
        }
        if within is not None:
            metrics["within_label_auc"] = within
        predictable = "predictable" if p_value < self.alpha else "not reliably predictable"
        finding = (
            f"Group is {predictable} from the embeddings: {self.model} probe AUC {auc:.3f}, "
            f"accuracy {accuracy:.3f} vs {baseline:.3f} majority baseline "
            f"({format_p(p_value, self._n_permutations())})"
        )
        if within is not None:
            finding += f"; within task labels AUC {within:.3f}"
        details = {
            "model": self.model,
            "n_splits": len(folds),
            "ridge_per_fold": self.ridge_per_fold_ if self.model == "linear" else None,
            "p_value_test": "within-fold label permutation with refitting",
            "n_permutations": self._n_permutations(),
            "null_auc_mean": float(null.mean()),
            "null_auc_95": float(np.quantile(null, 0.95)),
            "thresholds_d": list(thresholds),
            "thresholds_auc": [d_to_auc(t) for t in thresholds],
            "per_group_recall": dict(zip(data.group_names, recalls)),
            "fit_warnings": notes,
        }
        return metrics, risk, finding, details
