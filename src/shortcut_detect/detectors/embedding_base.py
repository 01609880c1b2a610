"""What the embedding detectors share: input checks, the risk rule, a base class.

The risk rule (documented in :mod:`shortcut_detect.detectors`): a method rates group
information

- ``LOW`` unless its test of "no group information" has ``p < alpha`` (default 0.01),
- ``MODERATE`` if significant and the effect reaches the moderate threshold,
- ``HIGH`` if significant and the effect reaches the high threshold.

Effects are on Cohen's d scale where possible (0.5 medium, 0.8 large), so the methods agree
on what "strong" means; HBAC uses cluster enrichment instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from shortcut_detect.common.risk import Risk
from shortcut_detect.detectors.base import BaseDetector, failed_report

__all__ = [
    "DEFAULT_ALPHA",
    "EmbeddingDetector",
    "GroupedEmbeddings",
    "InsufficientDataError",
    "as_embeddings",
    "as_group_labels",
    "check_permutations",
    "format_p",
    "permutation_p_value",
    "prepare_embeddings",
    "rate_risk",
    "stratified_folds",
    "within_fold_permutations",
]

DEFAULT_ALPHA = 0.01


class InsufficientDataError(ValueError):
    """The data are valid but too few for this method; the method reports ``success=False``."""


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(
        values, "cpu"
    ):  # torch tensors, without importing torch
        values = values.detach().cpu().numpy()
    elif hasattr(values, "to_numpy"):  # pandas Series / DataFrame
        values = values.to_numpy()
    return np.asarray(values)


def as_embeddings(embeddings: Any) -> np.ndarray:
    """Validate embeddings and return them as a float64 ``(N, D)`` array.

    A 1-D array of length ``N`` is ``N`` samples with one feature each, i.e. ``(N, 1)``.

    Raises
    ------
    ValueError
        Empty input, more than 2 dimensions, non-numeric values, NaN or Inf.
    """
    if embeddings is None:
        raise ValueError("embeddings are required: an (N, D) array with one row per sample")
    array = _to_numpy(embeddings)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(
            f"embeddings must be numeric, got dtype {array.dtype}; pass an (N, D) float array"
        )
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(
            f"embeddings must be (N, D) (or (N,) for one feature), got shape {array.shape}; "
            "pool or flatten feature maps first (shortcut_detect.embeddings.extract_embeddings "
            "pools them for you)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"embeddings are empty (shape {array.shape})")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"embeddings contain NaN or Inf in {len(bad_rows)} of {len(array)} rows (first at "
            f"row {int(bad_rows[0])}); drop or impute those samples first"
        )
    return array


def as_group_labels(group_labels: Any, n_samples: int | None = None) -> tuple[np.ndarray, tuple]:
    """Encode group labels as codes ``0..G-1`` (sorted order of the labels).

    Returns ``(codes, groups)`` where ``groups[code]`` is the original label. Any hashable,
    sortable labels work (ints, strings, booleans).

    Raises
    ------
    ValueError
        Not one label per sample, missing labels (None / NaN), a length that differs from
        ``n_samples``, or fewer than two groups.
    """
    if group_labels is None:
        raise ValueError("group_labels are required: one group label per sample")
    labels = _to_numpy(group_labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"group_labels must be 1-D (one label per sample), got shape {labels.shape}; "
            "for one-hot groups pass labels.argmax(axis=1)"
        )
    if n_samples is not None and len(labels) != n_samples:
        raise ValueError(
            f"embeddings have {n_samples} rows but group_labels has {len(labels)} entries; "
            "they must describe the same samples in the same order"
        )
    if labels.dtype == object:
        missing = [i for i, value in enumerate(labels) if value is None or value != value]
    elif np.issubdtype(labels.dtype, np.floating):
        missing = np.flatnonzero(np.isnan(labels)).tolist()
    else:
        missing = []
    if missing:
        raise ValueError(
            f"group_labels has {len(missing)} missing values (None/NaN), first at index "
            f"{missing[0]}; drop those samples or give them a group"
        )
    try:
        groups, codes = np.unique(labels, return_inverse=True)
    except TypeError as error:
        raise ValueError(
            f"group labels must be mutually comparable (all strings or all numbers): {error}"
        ) from None
    if len(groups) < 2:
        only = groups[0].item() if len(groups) else None
        raise ValueError(
            f"group_labels contains a single group ({only!r}); shortcut tests compare groups, "
            "so at least two groups are needed"
        )
    return codes.astype(np.int64), tuple(
        value.item() if hasattr(value, "item") else value for value in groups
    )


@dataclass(frozen=True)
class GroupedEmbeddings:
    """Validated inputs: ``(N, D)`` float64 embeddings and group codes ``0..G-1``."""

    X: np.ndarray
    codes: np.ndarray
    groups: tuple
    labels: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_groups)

    @property
    def group_names(self) -> list[str]:
        return [str(group) for group in self.groups]

    def require_group_size(self, minimum: int, method: str) -> None:
        """Raise :class:`InsufficientDataError` if a group has fewer than ``minimum`` samples."""
        counts = self.counts
        small = [(self.group_names[i], int(c)) for i, c in enumerate(counts) if c < minimum]
        if small:
            listed = ", ".join(f"{name!r}: {count}" for name, count in small)
            raise InsufficientDataError(
                f"{method} needs at least {minimum} samples per group; too few in {listed}"
            )


def prepare_embeddings(embeddings: Any, group_labels: Any, labels: Any = None) -> GroupedEmbeddings:
    """Validate and encode the inputs shared by all embedding detectors (see
    :func:`as_embeddings`, :func:`as_group_labels`); ``labels`` (task labels) are optional."""
    X = as_embeddings(embeddings)
    codes, groups = as_group_labels(group_labels, len(X))
    task = None
    if labels is not None:
        task = _to_numpy(labels)
        if task.ndim != 1 or len(task) != len(X):
            raise ValueError(
                f"labels must be 1-D with one entry per sample ({len(X)}), got shape {task.shape}"
            )
    return GroupedEmbeddings(X=X, codes=codes, groups=groups, labels=task)


def rate_risk(p_value: float, effect: float, thresholds: Sequence[float], alpha: float) -> Risk:
    """``LOW`` unless ``p_value < alpha``; then ``HIGH`` / ``MODERATE`` by ``effect`` against
    ``thresholds = (moderate, high)``."""
    moderate, high = thresholds
    if not p_value < alpha:
        return Risk.LOW
    if effect >= high:
        return Risk.HIGH
    if effect >= moderate:
        return Risk.MODERATE
    return Risk.LOW


def _check_thresholds(thresholds: Sequence[float], name: str) -> tuple[float, float]:
    values = tuple(float(t) for t in thresholds)
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise ValueError(
            f"{name} must be (moderate, high) with 0 <= moderate <= high, got {thresholds}"
        )
    return values  # type: ignore[return-value]


# Below this many values (N * D), BLAS/OpenMP thread start-up costs more than it saves; on a
# busy machine, small fits run about 10 times faster on one thread.
SINGLE_THREAD_MAX_VALUES = 2_000_000


@contextmanager
def _thread_limit(n_values: int) -> Iterator[None]:
    """One BLAS/OpenMP thread for small inputs (restored afterwards)."""
    if n_values > SINGLE_THREAD_MAX_VALUES:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl ships with scikit-learn; without it, do nothing
        yield
        return
    with threadpool_limits(limits=1):
        yield


class EmbeddingDetector(BaseDetector):
    """Base of the embedding detectors: ``fit(embeddings, group_labels, labels=None)``.

    Subclasses implement :meth:`_analyse` and return the report pieces; input errors raise
    ``ValueError``, while data too small for the method give a report with
    ``success=False`` (see :class:`InsufficientDataError`).

    Parameters
    ----------
    alpha:
        Significance level of the method's test; above it the risk is ``LOW``.
    random_state:
        Seed for cross-validation splits, clustering and permutations.
    """

    name = "embedding"

    def __init__(self, *, alpha: float = DEFAULT_ALPHA, random_state: int | None = 0) -> None:
        self.alpha = alpha
        self.random_state = random_state

    def validate_params(self) -> None:
        """Check ``alpha``; subclasses add their own parameters."""
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def fit(self, embeddings: Any, group_labels: Any, labels: Any = None) -> EmbeddingDetector:
        """Run the test on ``(N, D)`` embeddings and ``(N,)`` group labels; returns ``self``.

        Parameters
        ----------
        embeddings:
            ``(N, D)`` array or tensor (``(N,)`` is one feature per sample).
        group_labels:
            One group per sample: ints, strings or booleans; at least two groups.
        labels:
            Optional task labels, used by methods that can control for them.
        """
        self.validate_params()
        data = prepare_embeddings(embeddings, group_labels, labels)
        try:
            with _thread_limit(data.n_samples * data.n_features):
                metrics, risk, finding, details = self._analyse(data)
        except InsufficientDataError as error:
            self.report_ = failed_report(self.name, str(error))
            return self
        self._make_report(metrics, risk, finding, details)
        return self

    def _analyse(self, data: GroupedEmbeddings) -> tuple[dict[str, Any], Risk, str, dict[str, Any]]:
        raise NotImplementedError

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(self.random_state)


def stratified_folds(
    codes: np.ndarray, n_splits: int, random_state: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified ``(train, test)`` index pairs (scikit-learn's StratifiedKFold),
    with ``n_splits`` reduced to the smallest group's size."""
    from sklearn.model_selection import StratifiedKFold

    n_splits = int(min(n_splits, np.bincount(codes).min()))
    if n_splits < 2:
        raise InsufficientDataError("cross-validation needs at least 2 samples per group")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return list(cv.split(np.zeros(len(codes)), codes))


def within_fold_permutations(
    codes: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_permutations: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(n_permutations, N)`` label vectors, each permuted within every test fold.

    Under "no group information", labels are exchangeable within each fold given the fold
    sets, so re-running a cross-fitted statistic on these (refitting on the permuted training
    labels) gives an exact permutation test that keeps every fold's group counts.
    """
    permuted = np.empty((n_permutations, len(codes)), dtype=np.int64)
    for _, test in folds:
        permuted[:, test] = rng.permuted(np.tile(codes[test], (n_permutations, 1)), axis=1)
    return permuted


def format_p(p_value: float, n_permutations: int | None = None) -> str:
    """``p=0.0123``, or ``p<0.001`` when a permutation p-value is the smallest possible."""
    if n_permutations and p_value <= 1.0 / (n_permutations + 1) + 1e-15:
        return f"p<{1.0 / n_permutations:.2g}"
    return f"p={p_value:.3g}"


def check_permutations(n_permutations: int, alpha: float) -> int:
    """Reject permutation counts whose smallest p-value, ``1 / (n + 1)``, cannot be below
    ``alpha`` (such a test could never flag anything)."""
    n_permutations = int(n_permutations)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be positive, got {n_permutations}")
    if 1.0 / (n_permutations + 1) >= alpha:
        needed = int(np.ceil(1.0 / alpha))
        raise ValueError(
            f"n_permutations={n_permutations} cannot give p < alpha={alpha:g} (the smallest "
            f"permutation p-value is 1/(n+1)); use at least {needed} permutations"
        )
    return n_permutations


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (ties count as exceeding)."""
    tolerance = 1e-12 * max(1.0, abs(observed))
    return (1 + int(np.sum(null >= observed - tolerance))) / (1 + len(null))
