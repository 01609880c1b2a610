"""HBAC: hierarchical bias-aware clustering of the embedding space.

The embeddings (standardised, reduced to their top principal components) are split again
and again in two with k-means, into a cluster tree of depth ``max_depth``; a split that would
leave a cluster below ``min_cluster_size`` is not made. The tree never sees the groups.

The bias-aware part searches that tree for the clusters whose group composition departs most
from the whole data set's: every cluster is scored with the chi-square statistic of "this
cluster vs the rest" against the groups, and the highest score is the test statistic. Its
p-value comes from permuting the group labels over the fixed tree, so searching many clusters
is accounted for (a max-statistic permutation test).

Effect size: the *enrichment* of the most biased cluster, ``(p_cg - p_g) / (1 - p_g)`` for
its most over-represented group ``g`` (``p_cg`` its share in the cluster, ``p_g`` overall):
0 is the overall mix, 1 a cluster of that group only. For two equal groups, a cluster of
purity 65% has enrichment 0.3 and one of 80% has 0.6 (the default thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortcut_detect.detectors.embedding_base import (
    DEFAULT_ALPHA,
    EmbeddingDetector,
    GroupedEmbeddings,
    InsufficientDataError,
    _check_thresholds,
    check_permutations,
    format_p,
    rate_risk,
)

__all__ = ["ClusterNode", "HBACDetector", "bisecting_tree"]


@dataclass
class ClusterNode:
    """A cluster of the tree: ``path`` like ``"0.1"`` (root ``"root"``), member indices."""

    path: str
    depth: int
    members: np.ndarray
    children: list[ClusterNode] = field(default_factory=list)


def bisecting_tree(
    Z: np.ndarray, max_depth: int, min_cluster_size: int, random_state: int | None
) -> list[ClusterNode]:
    """All nodes of a bisecting k-means tree over the rows of ``Z`` (root first)."""
    from sklearn.cluster import KMeans

    root = ClusterNode("root", 0, np.arange(len(Z)))
    nodes = [root]
    frontier = [root]
    while frontier:
        node = frontier.pop(0)
        if node.depth >= max_depth or len(node.members) < 2 * min_cluster_size:
            continue
        points = Z[node.members]
        if np.ptp(points, axis=0).max() == 0:
            continue  # identical points cannot be split
        assignment = KMeans(n_clusters=2, n_init=3, random_state=random_state).fit_predict(points)
        parts = [node.members[assignment == side] for side in (0, 1)]
        if min(len(part) for part in parts) < min_cluster_size:
            continue
        prefix = "" if node.path == "root" else node.path + "."
        for side, part in enumerate(parts):
            child = ClusterNode(f"{prefix}{side}", node.depth + 1, part)
            node.children.append(child)
            nodes.append(child)
            frontier.append(child)
    return nodes


def _chi2_vs_rest(cluster_counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Pearson chi-square of the (cluster vs rest) x group table, for many clusters at once.

    ``cluster_counts`` is ``(..., K, G)``; ``totals`` the ``(G,)`` group sizes.
    """
    n = totals.sum()
    sizes = cluster_counts.sum(axis=-1, keepdims=True)
    share = totals / n
    expected_in = sizes * share
    expected_out = (n - sizes) * share
    rest = totals - cluster_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = (cluster_counts - expected_in) ** 2 / expected_in + (
            rest - expected_out
        ) ** 2 / expected_out
    return np.nansum(chi2, axis=-1)


class HBACDetector(EmbeddingDetector):
    """Hierarchical bias-aware clustering: clusters of the embeddings that are group-pure.

    Parameters
    ----------
    max_depth:
        Depth of the bisecting k-means tree (up to ``2 ** max_depth`` leaf clusters).
    min_cluster_size:
        Smallest cluster; ``None`` means ``max(10, 5% of the samples)``.
    n_components:
        Principal components kept before clustering (fewer if the data have fewer).
    n_permutations:
        Label permutations for the p-value.
    thresholds:
        ``(moderate, high)`` enrichment of the most biased cluster; default ``(0.3, 0.6)``.
    top_k:
        How many of the most group-pure clusters the report lists.
    alpha, random_state:
        See :class:`~shortcut_detect.detectors.embedding_base.EmbeddingDetector`.
    """

    name = "hbac"

    def __init__(
        self,
        *,
        max_depth: int = 3,
        min_cluster_size: int | None = None,
        n_components: int = 10,
        n_permutations: int = 1000,
        thresholds: tuple[float, float] = (0.3, 0.6),
        top_k: int = 5,
        alpha: float = DEFAULT_ALPHA,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(alpha=alpha, random_state=random_state)
        self.max_depth = max_depth
        self.min_cluster_size = min_cluster_size
        self.n_components = n_components
        self.n_permutations = n_permutations
        self.thresholds = thresholds
        self.top_k = top_k

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        super().validate_params()
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be at least 1, got {self.max_depth}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be at least 2, got {self.min_cluster_size}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be positive, got {self.n_components}")
        check_permutations(self.n_permutations, self.alpha)
        _check_thresholds(self.thresholds, "thresholds")

    def risk_rule(self) -> str:
        """The risk thresholds in words."""
        moderate, high = _check_thresholds(self.thresholds, "thresholds")
        return (
            f"enrichment of the most group-biased cluster >= {moderate:g} MODERATE, "
            f">= {high:g} HIGH (0 = overall mix, 1 = one group only)"
        )

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        """Standardise, then keep the top principal components."""
        from sklearn.decomposition import PCA

        scale = X.std(axis=0)
        Z = (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
        n_components = min(int(self.n_components), Z.shape[1], Z.shape[0] - 1)
        if n_components < Z.shape[1]:
            Z = PCA(n_components=n_components, random_state=self.random_state).fit_transform(Z)
        return Z

    def _analyse(self, data: GroupedEmbeddings) -> tuple[dict, str, str, dict]:
        n, n_groups = data.n_samples, data.n_groups
        n_permutations = int(self.n_permutations)
        thresholds = _check_thresholds(self.thresholds, "thresholds")
        min_size = self.min_cluster_size or max(10, int(np.ceil(0.05 * n)))
        if n < 2 * min_size:
            raise InsufficientDataError(
                f"hbac needs at least {2 * min_size} samples to form two clusters of "
                f"{min_size}; got {n}"
            )
        Z = self._reduce(data.X)
        nodes = bisecting_tree(Z, int(self.max_depth), min_size, self.random_state)[1:]
        if not nodes:
            raise InsufficientDataError(
                "hbac could not split the embeddings into clusters of at least "
                f"{min_size} samples (identical or too few points)"
            )
        membership = np.zeros((len(nodes), n))
        for k, node in enumerate(nodes):
            membership[k, node.members] = 1.0
        totals = data.counts.astype(float)
        onehot = np.eye(n_groups)[data.codes]
        counts = membership @ onehot  # (K, G)
        chi2 = _chi2_vs_rest(counts, totals)
        observed = float(chi2.max())

        rng = self._rng()
        null = np.empty(n_permutations)
        chunk = max(1, 4_000_000 // max(n * n_groups, 1))
        for start in range(0, n_permutations, chunk):
            size = min(chunk, n_permutations - start)
            perms = rng.permuted(np.tile(data.codes, (size, 1)), axis=1)  # (P, N)
            perm_onehot = np.eye(n_groups)[perms]  # (P, N, G)
            perm_counts = np.einsum("kn,png->pkg", membership, perm_onehot)
            null[start : start + size] = _chi2_vs_rest(perm_counts, totals).max(axis=1)
        p_value = (1 + int(np.sum(null >= observed - 1e-9))) / (1 + n_permutations)

        shares = totals / n
        sizes = counts.sum(axis=1)
        cluster_share = counts / sizes[:, None]
        enrichment_by_group = (cluster_share - shares) / (1 - shares)
        dominant = enrichment_by_group.argmax(axis=1)
        enrichment = enrichment_by_group[np.arange(len(nodes)), dominant]
        best = int(np.argmax(chi2))
        effect = float(enrichment[best])
        risk = rate_risk(p_value, effect, thresholds, self.alpha)

        leaves = [k for k, node in enumerate(nodes) if not node.children]
        leaf_table = counts[leaves]
        cramers_v = float(
            np.sqrt(_chi2_vs_table(leaf_table) / (n * max(1, min(len(leaves), n_groups) - 1)))
        )

        def describe(k: int) -> dict[str, Any]:
            return {
                "cluster": nodes[k].path,
                "depth": nodes[k].depth,
                "size": int(sizes[k]),
                "group_counts": dict(zip(data.group_names, map(int, counts[k]))),
                "purity": float(cluster_share[k].max()),
                "dominant_group": data.group_names[int(dominant[k])],
                "enrichment": float(enrichment[k]),
                "chi2": float(chi2[k]),
            }

        by_purity = sorted(range(len(nodes)), key=lambda k: (-enrichment[k], -sizes[k]))
        top = [describe(k) for k in by_purity[: int(self.top_k)]]
        best_info = describe(best)
        metrics: dict[str, Any] = {
            "max_enrichment": effect,
            "max_purity": best_info["purity"],
            "biased_cluster_size": best_info["size"],
            "biased_cluster_share": best_info["size"] / n,
            "n_clusters": len(leaves),
            "cramers_v": cramers_v,
            "chi2": observed,
            "p_value": float(p_value),
        }
        finding = (
            f"Most group-biased cluster ({best_info['size']} of {n} samples) is "
            f"{best_info['purity']:.0%} group {best_info['dominant_group']!r} "
            f"(enrichment {effect:.2f}, {format_p(p_value, n_permutations)}) among "
            f"{len(leaves)} clusters"
        )
        details = {
            "most_biased_cluster": best_info,
            "top_clusters": top,
            "leaves": [describe(k) for k in leaves],
            "min_cluster_size": min_size,
            "n_components": int(Z.shape[1]),
            "max_depth": int(self.max_depth),
            "n_permutations": n_permutations,
            "thresholds_enrichment": list(thresholds),
        }
        return metrics, risk, finding, details


def _chi2_vs_table(table: np.ndarray) -> float:
    """Pearson chi-square of a full contingency table (zero rows/columns ignored)."""
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())
