"""SpRAy (spectral relevance analysis): cluster heatmaps to find the strategies a model uses.

Following Lapuschkin et al. (2019, "Unmasking Clever Hans predictors"): heatmaps are
down-sampled to a small fixed grid, a sparse k-nearest-neighbour affinity graph is built
over them, the number of clusters is read from the eigengap of its normalised Laplacian,
and spectral clustering groups samples that the model explains the same way. A cluster
whose mean map puts most attention in a small, fixed region is a candidate "Clever Hans"
strategy (a watermark, a tag, a border).

The graph is sparse (``n_neighbors`` edges per sample) and the grid fixed (16x16 by
default), so thousands of heatmaps take seconds.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from shortcut_detect.analysis.groups import group_codes
from shortcut_detect.analysis.maps import (
    area_resize,
    as_heatmap_stack,
    concentration_area,
    entropy,
    location_words,
    mass_normalize,
    mass_overlap,
    peak_locations,
)
from shortcut_detect.common.risk import Risk
from shortcut_detect.common.serialization import nan_to_none
from shortcut_detect.common.validation import positive_int
from shortcut_detect.detectors.base import BaseDetector

__all__ = ["SpRAyDetector"]

N_REPRESENTATIVES = 8
CHUNK = 1024  # maps down-sampled at a time (bounds float64 temporaries)


def _distribution(codes: np.ndarray, names: list[Hashable]) -> dict[str, int]:
    counts = np.bincount(codes, minlength=len(names))
    return {str(name): int(count) for name, count in zip(names, counts)}


class SpRAyDetector(BaseDetector):
    """Spectral relevance analysis of heatmaps.

    Parameters
    ----------
    n_clusters:
        Fixed number of clusters; ``None`` chooses it by the eigengap heuristic.
    max_clusters:
        Largest number of clusters the eigengap may choose.
    min_clusters:
        Smallest number of clusters the eigengap may choose (1 allows "one strategy").
    downsample:
        Grid the heatmaps are area-averaged to before clustering (smaller maps are kept).
    n_neighbors:
        Neighbours per sample in the affinity graph.
    concentration_mass, small_region_area:
        A cluster is flagged when its mean map holds ``concentration_mass`` of its
        attention in at most ``small_region_area`` of the image.
    max_eigenvalue, gap_ratio:
        The eigengap only considers ``k`` clusters when the ``k``-th smallest eigenvalue of
        the normalised Laplacian is at most ``max_eigenvalue`` (the ``k`` groups are
        nearly disconnected in the graph) and the next one is at least ``gap_ratio``
        times larger (a clear gap).
    random_state:
        Seed of the k-means step of spectral clustering.

    Attributes
    ----------
    labels_:
        ``(N,)`` cluster per sample.
    eigenvalues_:
        Smallest eigenvalues of the normalised graph Laplacian, ascending.
    cluster_mean_maps_:
        ``(K, H, W)`` mean heatmap per cluster at the input resolution.
    features_:
        ``(N, h*w)`` the down-sampled, mass-normalised maps that were clustered.
    """

    name = "spray"

    def __init__(
        self,
        n_clusters: int | None = None,
        max_clusters: int = 10,
        *,
        min_clusters: int = 1,
        downsample: Sequence[int] = (16, 16),
        n_neighbors: int = 10,
        concentration_mass: float = 0.5,
        small_region_area: float = 0.1,
        max_eigenvalue: float = 0.1,
        gap_ratio: float = 2.0,
        random_state: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
        self.min_clusters = min_clusters
        self.downsample = downsample
        self.n_neighbors = n_neighbors
        self.concentration_mass = concentration_mass
        self.small_region_area = small_region_area
        self.max_eigenvalue = max_eigenvalue
        self.gap_ratio = gap_ratio
        self.random_state = random_state

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        n_clusters = self.n_clusters
        if n_clusters is not None:
            positive_int("n_clusters", n_clusters)
        if not 1 <= self.min_clusters <= self.max_clusters:
            raise ValueError(
                f"Need 1 <= min_clusters <= max_clusters, got {self.min_clusters} and "
                f"{self.max_clusters}"
            )
        downsample = tuple(self.downsample)
        if len(downsample) != 2 or any(int(side) < 2 for side in downsample):
            raise ValueError(f"downsample must be (h, w) with sides >= 2, got {self.downsample!r}")
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be at least 2, got {self.n_neighbors}")
        if not 0.0 < self.concentration_mass <= 1.0 or not 0.0 < self.small_region_area <= 1.0:
            raise ValueError("concentration_mass and small_region_area must be in (0, 1]")
        if not 0.0 < self.max_eigenvalue <= 2.0:
            raise ValueError(f"max_eigenvalue must be in (0, 2], got {self.max_eigenvalue}")
        if self.gap_ratio < 1.0:
            raise ValueError(f"gap_ratio must be at least 1, got {self.gap_ratio}")

    # -- the graph -----------------------------------------------------------------------
    def _affinity(self, features: np.ndarray) -> Any:
        """Symmetric sparse kNN affinity with self-tuning (local) scales."""
        from scipy import sparse
        from sklearn.neighbors import NearestNeighbors

        n_samples = len(features)
        k = min(int(self.n_neighbors), n_samples - 1)
        distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
        distances, indices = distances[:, 1:], indices[:, 1:]  # drop each sample itself
        scale = distances[:, min(k, 7) - 1]  # Zelnik-Manor & Perona: 7th neighbour
        positive = scale[scale > 0]
        floor = (np.median(positive) if positive.size else 1.0) * 1e-3
        scale = np.maximum(scale, floor)
        weights = np.exp(-(distances**2) / (scale[:, None] * scale[indices]))
        rows = np.repeat(np.arange(n_samples), k)
        graph = sparse.csr_matrix(
            (weights.ravel(), (rows, indices.ravel())), shape=(n_samples, n_samples)
        )
        return graph.maximum(graph.T).tocsr()

    def _embedding(self, affinity: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Smallest ``count`` eigenvalues of the normalised Laplacian (ascending) and the
        matching eigenvectors ``(N, count)`` of ``D^-1/2 W D^-1/2``."""
        from scipy import sparse
        from scipy.sparse.linalg import eigsh

        degree = np.asarray(affinity.sum(axis=1)).ravel()
        inverse_root = 1.0 / np.sqrt(np.maximum(degree, 1e-300))
        normalised = sparse.diags(inverse_root) @ affinity @ sparse.diags(inverse_root)
        n_samples = affinity.shape[0]
        if n_samples <= 500 or count >= n_samples - 1:
            values, vectors = np.linalg.eigh(normalised.toarray())
            values, vectors = values[::-1][:count], vectors[:, ::-1][:, :count]
        else:
            # The largest eigenvalues of D^-1/2 W D^-1/2 are 1 minus the smallest of the
            # Laplacian; asking for them needs only products with a sparse matrix (no
            # factorisation), which keeps thousands of samples fast.
            start = np.random.default_rng(self.random_state).uniform(0.5, 1.0, n_samples)
            values, vectors = eigsh(normalised, k=count, which="LA", v0=start, tol=1e-8)
            order = np.argsort(values)[::-1]
            values, vectors = values[order], vectors[:, order]
        return np.clip(1.0 - values, 0.0, 2.0), vectors

    def _eigengap_choice(self, eigenvalues: np.ndarray, max_k: int) -> int:
        """Number of clusters ``k`` with the largest eigengap ``lambda_{k+1} - lambda_k``
        among the ``k`` whose gap is clear.

        A gap is clear when ``lambda_k <= max_eigenvalue`` (the graph holds ``k`` nearly
        disconnected groups, by Cheeger's inequality) and ``lambda_{k+1} >= gap_ratio *
        lambda_k`` (the next split is clearly harder). One smooth family of maps (attention
        on an object that moves around the image) has a slowly rising spectrum with no
        clear gap, and stays one cluster instead of being cut at a random bump.
        """
        low = min(int(self.min_clusters), max_k)
        candidates = [
            k
            for k in range(low, max_k + 1)
            if eigenvalues[k - 1] <= self.max_eigenvalue
            and eigenvalues[k] >= self.gap_ratio * eigenvalues[k - 1]
        ] or [low]
        gaps = [eigenvalues[k] - eigenvalues[k - 1] for k in candidates]
        return candidates[int(np.argmax(gaps))]

    # -- fit -----------------------------------------------------------------------------
    def fit(
        self,
        heatmaps: Any,
        labels: Sequence[Hashable] | np.ndarray | None = None,
        group_labels: Sequence[Hashable] | np.ndarray | None = None,
    ) -> SpRAyDetector:
        """Cluster the heatmaps and report the strategies found.

        Parameters
        ----------
        heatmaps:
            Non-negative ``(N, H, W)`` maps (any resolution), N >= 4.
        labels:
            Optional class label (or prediction) per sample: each cluster's label purity.
        group_labels:
            Optional group per sample (e.g. marker present / absent, a protected
            attribute): adjusted Rand index of the clusters against it, group purity.
        """
        from sklearn.metrics import adjusted_rand_score

        self.validate_params()
        if heatmaps is None:
            raise ValueError("SpRAyDetector.fit needs heatmaps (N, H, W)")
        maps = as_heatmap_stack(heatmaps, keep_float32=True)
        if maps.ndim not in (3, 4):
            raise ValueError(f"heatmaps must be (N, H, W) or (N, D, H, W); got shape {maps.shape}")
        n_samples = len(maps)
        if n_samples < 4:
            raise ValueError(f"SpRAy needs at least 4 heatmaps to cluster, got {n_samples}")
        fixed_clusters = None if self.n_clusters is None else int(self.n_clusters)
        if fixed_clusters is not None and fixed_clusters > n_samples - 1:
            raise ValueError(f"n_clusters={fixed_clusters} is too many for {n_samples} heatmaps")
        label_info = group_codes(labels, n_samples) if labels is not None else None
        group_info = group_codes(group_labels, n_samples) if group_labels is not None else None

        downsample = tuple(int(side) for side in self.downsample)
        if maps.ndim == 4:  # volumes: the first side for every axis
            downsample = (downsample[0],) * 3
        grid = tuple(min(s, d) for s, d in zip(maps.shape[1:], downsample))
        small = np.concatenate(
            [area_resize(maps[i : i + CHUNK], grid) for i in range(0, n_samples, CHUNK)]
        )
        features = mass_normalize(small).reshape(n_samples, -1)
        empty = np.isnan(features[:, 0])
        features[empty] = 0.0  # zero-mass maps: one point, far from all real maps
        self.features_ = features

        assignments, eigenvalues = self._cluster(features, fixed_clusters)
        n_clusters = int(assignments.max()) + 1
        gaps = np.diff(eigenvalues)  # gaps[k - 1] = lambda_{k+1} - lambda_k
        self.labels_, self.eigenvalues_ = assignments, eigenvalues
        self.cluster_mean_maps_ = np.stack(
            [maps[assignments == c].mean(axis=0, dtype=np.float64) for c in range(n_clusters)]
        )
        clusters = self._describe_clusters(
            maps.shape[1:],
            self.cluster_mean_maps_,
            small,
            features,
            empty,
            assignments,
            (label_info, group_info),
        )
        metrics: dict[str, Any] = {
            "n_samples": n_samples,
            "n_clusters": n_clusters,
            "n_clusters_chosen_by": "fixed" if fixed_clusters is not None else "eigengap",
            "eigengap": float(gaps[n_clusters - 1]) if n_clusters - 1 < gaps.size else None,
            "eigenvalues": [float(v) for v in eigenvalues],
            "cluster_sizes": [c["size"] for c in clusters],
            "n_flagged_clusters": sum(c["flagged"] for c in clusters),
            "flagged_clusters": [c["cluster"] for c in clusters if c["flagged"]],
            "n_empty_heatmaps": int(empty.sum()),
            "grid": grid,
        }
        for key, coded in (("labels", label_info), ("groups", group_info)):
            if coded is None:
                continue
            singular = key[:-1]
            metrics[f"ari_{key}"] = float(adjusted_rand_score(coded[1], assignments))
            metrics[f"{singular}_purity"] = float(
                sum(c[f"{singular}_purity"] * c["size"] for c in clusters) / n_samples
            )
        risk, finding = self._assess(clusters, metrics, group_info is not None)
        details = {"clusters": clusters, "assignments": [int(a) for a in assignments]}
        self._make_report(metrics, risk, finding, details)
        return self

    def _cluster(
        self, features: np.ndarray, fixed_clusters: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cluster per sample (0 = largest) and the Laplacian's smallest eigenvalues."""
        from sklearn.cluster import KMeans

        n_samples = len(features)
        max_k = min(int(self.max_clusters), n_samples - 1)
        affinity = self._affinity(features)
        count = min(n_samples, max(max_k, fixed_clusters or 0) + 1)
        eigenvalues, vectors = self._embedding(affinity, count)
        if fixed_clusters is not None:
            n_clusters = fixed_clusters
        else:
            n_clusters = self._eigengap_choice(eigenvalues, max_k)
        if n_clusters == 1:
            assignments = np.zeros(n_samples, dtype=np.int64)
        else:
            # Ng, Jordan & Weiss: k-means on the row-normalised leading eigenvectors.
            embedded = vectors[:, :n_clusters]
            norms = np.linalg.norm(embedded, axis=1, keepdims=True)
            embedded = embedded / np.maximum(norms, 1e-12)
            kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=self.random_state)
            assignments = kmeans.fit_predict(embedded).astype(np.int64)
        return _order_by_size(assignments), eigenvalues

    def _describe_clusters(
        self,
        map_shape: tuple[int, ...],
        mean_maps: np.ndarray,
        small: np.ndarray,
        features: np.ndarray,
        empty: np.ndarray,
        assignments: np.ndarray,
        coded: tuple[tuple[list[Hashable], np.ndarray] | None, ...],
    ) -> list[dict[str, Any]]:
        """One dict per cluster: size, concentration, peak, representatives, and the purity
        of the ``coded`` (label, group) codes when given."""
        n_samples = len(assignments)
        n_clusters = len(mean_maps)
        means_small = np.stack([small[assignments == c].mean(axis=0) for c in range(n_clusters)])
        concentration = concentration_area(means_small, self.concentration_mass)
        spread = entropy(means_small)
        peaks = peak_locations(mean_maps)
        clusters = []
        for cluster in range(n_clusters):
            members = np.flatnonzero(assignments == cluster)
            rest = assignments != cluster
            centre = features[members].mean(axis=0)
            nearest = members[np.argsort(((features[members] - centre) ** 2).sum(axis=1))]
            info: dict[str, Any] = {
                "cluster": cluster,
                "size": int(members.size),
                "share": members.size / n_samples,
                "concentration_area": nan_to_none(concentration[cluster]),
                "entropy": nan_to_none(spread[cluster]),
                "peak": tuple(int(v) for v in peaks[cluster]),
                "peak_location": location_words(peaks[cluster][-2:], map_shape),
                "mass_overlap_with_rest": (
                    nan_to_none(
                        mass_overlap(means_small[cluster][None], small[rest].mean(axis=0)[None])[0]
                    )
                    if rest.any()
                    else None
                ),
                "flagged": bool(
                    not np.isnan(concentration[cluster])
                    and concentration[cluster] <= self.small_region_area
                ),
                "representatives": [int(i) for i in nearest[:N_REPRESENTATIVES]],
                "mean_map": np.round(means_small[cluster], 5).tolist(),
                "n_empty_heatmaps": int(empty[members].sum()),
            }
            for key, codes_of in zip(("label", "group"), coded):
                if codes_of is None:
                    continue
                names, codes = codes_of
                counts = np.bincount(codes[members], minlength=len(names))
                info[f"{key}_distribution"] = _distribution(codes[members], names)
                info[f"majority_{key}"] = names[int(counts.argmax())]
                info[f"{key}_purity"] = float(counts.max() / members.size)
            clusters.append(info)
        return clusters

    def _assess(
        self, clusters: list[dict[str, Any]], metrics: dict[str, Any], has_groups: bool
    ) -> tuple[Risk, str]:
        flagged = [c for c in clusters if c["flagged"]]
        n_clusters = metrics["n_clusters"]
        ari = metrics.get("ari_groups")
        empty = metrics["n_empty_heatmaps"]
        note = f" {empty} heatmaps are all zero (no attention at all)." if empty else ""
        if n_clusters == 1:
            text = "SpRAy found one explanation strategy (no clear eigengap)"
            if flagged:
                text += (
                    f"; its attention concentrates: {self.concentration_mass:.0%} of it on "
                    f"{flagged[0]['concentration_area']:.1%} of the image "
                    f"({flagged[0]['peak_location']})"
                )
            return (Risk.MODERATE if flagged else Risk.LOW), text + "." + note
        sizes = ", ".join(str(s) for s in metrics["cluster_sizes"])
        if metrics["n_clusters_chosen_by"] == "eigengap":
            headline = (
                f"SpRAy found {n_clusters} explanation strategies (sizes {sizes}; eigengap "
                f"{metrics['eigengap']:.3f})"
            )
        else:
            headline = (
                f"SpRAy split the heatmaps into {n_clusters} clusters as asked (sizes {sizes})"
            )
        parts = [headline]
        for cluster in flagged:
            text = (
                f"cluster {cluster['cluster']} ({cluster['size']} samples) puts "
                f"{self.concentration_mass:.0%} of its attention on "
                f"{cluster['concentration_area']:.1%} of the image ({cluster['peak_location']}),"
                " a possible Clever Hans strategy"
            )
            if "majority_group" in cluster:
                text += (
                    f"; {cluster['group_purity']:.0%} of it is group {cluster['majority_group']!s}"
                )
            parts.append(text)
        if ari is not None:
            parts.append(f"clusters vs groups: adjusted Rand index {ari:.2f}")
        aligned = any(c.get("group_purity", 0.0) >= 0.8 for c in flagged)
        if flagged and (aligned or not has_groups):
            risk = Risk.HIGH
        elif flagged or (ari is not None and ari >= 0.2):
            risk = Risk.MODERATE
        else:
            risk = Risk.LOW
        return risk, "; ".join(parts) + "." + note


def _order_by_size(assignments: np.ndarray) -> np.ndarray:
    """Renumber clusters so that cluster 0 is the largest (ties: first seen)."""
    values, first_seen, counts = np.unique(assignments, return_index=True, return_counts=True)
    order = np.lexsort((first_seen, -counts))
    mapping = np.empty(values.max() + 1, dtype=np.int64)
    mapping[values[order]] = np.arange(values.size)
    return mapping[assignments]
