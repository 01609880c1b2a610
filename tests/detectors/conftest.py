"""Synthetic embeddings with a planted group signal of known effect size."""

from __future__ import annotations

import numpy as np
import pytest

SIGNAL_DIMS = 4


def make_planted(
    n: int = 300,
    dim: int = 32,
    shift: float = 0.0,
    n_groups: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal ``(n, dim)`` embeddings, balanced random groups; group ``j >= 1`` is
    shifted by ``shift`` (Cohen's d per dimension) in 4 dimensions of its own, so the
    Mahalanobis distance between group 0 and group j is ``2 * shift``."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.arange(n) % n_groups)
    X = rng.normal(size=(n, dim))
    for j in range(1, n_groups):
        start = ((j - 1) * SIGNAL_DIMS) % dim
        X[groups == j, start : start + SIGNAL_DIMS] += shift
    return X, groups


@pytest.fixture
def planted():
    return make_planted
