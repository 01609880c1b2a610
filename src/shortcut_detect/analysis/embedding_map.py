"""2-D maps of embeddings (t-SNE, UMAP, PCA) and a computed sentence saying what they show.

A map of the model's embeddings coloured by group is the first thing people look at in a
shortcut audit: when groups (hospitals, scanners) form separate islands within each class,
the model encodes the group. :func:`embedding_map` makes the map (deterministic with a
seed, subsampled above ``max_points``); :func:`describe_embedding_map` measures how separate
the groups are on it, against a permutation null, and says so in one sentence.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortcut_detect.common.serialization import nan_to_none, to_jsonable
from shortcut_detect.common.validation import positive_int

__all__ = [
    "EmbeddingMap",
    "MapDescription",
    "describe_embedding_map",
    "embedding_map",
]

METHODS = ("tsne", "umap", "pca", "auto")
#: Larger inputs are subsampled: the target is a map of 10^4 points in under a minute on 2 CPU
#: cores (``benchmarks/bench_embedding_map.py`` measures it).
DEFAULT_MAX_POINTS = 10_000


@dataclass
class EmbeddingMap:
    """A 2-D map of embeddings.

    Attributes
    ----------
    coordinates:
        ``(M, 2)`` float32 map positions of the points that were kept.
    indices:
        ``(M,)`` int64 positions of those points in the input (ascending); all of
        ``0..N-1`` unless the input was subsampled.
    method:
        ``"tsne"``, ``"umap"`` or ``"pca"`` (what actually ran).
    n_input:
        ``N``, the number of input points.
    seed:
        Seed of the subsampling and of the method.
    note:
        One or two sentences on how the map was made (subsampling, PCA step, parameters).
    params:
        The parameters the method ran with.
    seconds:
        Wall time of the computation.
    """

    coordinates: np.ndarray
    indices: np.ndarray
    method: str
    n_input: int
    seed: int
    note: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def subsampled(self) -> bool:
        """Whether only some of the input points are on the map."""
        return len(self.indices) < self.n_input

    def values_for_points(self, values: Any, name: str = "values") -> np.ndarray:
        """Per-point ``values`` (one per input point, or one per map point) for the map's
        points, in the order of :attr:`coordinates`."""
        array = np.asarray(values)
        if array.ndim != 1:
            array = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1)
        if len(array) == self.n_input:
            return array[self.indices]
        if len(array) == len(self.indices):
            return array
        raise ValueError(
            f"{name} has {len(array)} entries; give one per input point ({self.n_input}) "
            f"or one per map point ({len(self.indices)})"
        )

    def table(self, **columns: Any) -> dict[str, np.ndarray]:
        """Columns for an interactive scatter plot: ``x``, ``y``, ``index`` (position in the
        input) and each keyword column (per input point or per map point), e.g.
        ``pandas.DataFrame(result.table(group=groups, label=labels))``."""
        data: dict[str, np.ndarray] = {
            "x": self.coordinates[:, 0],
            "y": self.coordinates[:, 1],
            "index": self.indices,
        }
        for name, values in columns.items():
            if name in data:
                raise ValueError(f"column name {name!r} is taken; use another")
            data[name] = self.values_for_points(values, name)
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (coordinates and indices listed in full)."""
        return {
            "method": self.method,
            "n_input": self.n_input,
            "n_points": len(self.indices),
            "seed": self.seed,
            "note": self.note,
            "params": to_jsonable(self.params),
            "seconds": round(self.seconds, 3),
            "coordinates": self.coordinates.astype(float).round(5).tolist(),
            "indices": self.indices.tolist(),
        }


def _check_embeddings(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(
            f"embeddings must be a 2-D array (n_samples, n_features), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"embeddings must be numeric, got dtype {array.dtype}")
    if array.shape[0] < 3 or array.shape[1] < 1:
        raise ValueError(
            f"embeddings needs at least 3 points with at least 1 feature, got shape {array.shape}"
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int(np.sum(~np.isfinite(array).all(axis=1)))
        raise ValueError(f"embeddings has {bad} rows with NaN or Inf values; drop or fix them")
    return array


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "auto":
        return "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    return method


def embedding_map(
    embeddings: Any,
    method: str = "tsne",
    *,
    seed: int = 0,
    max_points: int | None = DEFAULT_MAX_POINTS,
    pca_dims: int | None = 50,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    max_iter: int = 500,
    n_threads: int | None = 1,
) -> EmbeddingMap:
    """Map embeddings to 2-D.

    Parameters
    ----------
    embeddings:
        ``(N, D)`` array or tensor, e.g. from :func:`shortcut_detect.extract_embeddings`.
    method:
        ``"tsne"`` (scikit-learn, Barnes-Hut), ``"umap"`` (needs ``umap-learn``), ``"pca"``
        (the first two principal components), or ``"auto"`` (UMAP where installed, else
        t-SNE).
    seed:
        Seed of the subsampling, the PCA step and UMAP: the same seed gives the same map
        (t-SNE starts from the PCA layout, so it has no randomness of its own).
    max_points:
        Above this many points a random subset of this size (without replacement, from
        ``seed``) is mapped; :attr:`EmbeddingMap.indices` says which. ``None`` maps all.
    pca_dims:
        For t-SNE and UMAP, reduce to this many principal components first (much faster and
        less noisy); ``None`` skips the step. Not used when ``D <= pca_dims``.
    perplexity:
        t-SNE perplexity; lowered to ``(M - 1) / 3`` for small maps (said in the note).
    n_neighbors:
        UMAP neighbourhood size.
    max_iter:
        t-SNE optimisation steps, at least 250 (the early-exaggeration phase). The default
        500 takes half the time of scikit-learn's 1000, which refines the layout a little
        more; see ``benchmarks/bench_embedding_map.py``.
    n_threads:
        OpenMP threads for t-SNE (``None``: scikit-learn's default, all cores). One thread
        is the default because on a busy machine (a server, parallel jobs) OpenMP's waiting
        threads made t-SNE 4-7 times slower in our measurements; on an idle multi-core
        machine ``None`` is faster.

    Returns
    -------
    EmbeddingMap
        Coordinates, the indices of the mapped points, and a note on how it was made.
    """
    started = time.perf_counter()
    data = _check_embeddings(embeddings)
    resolved = _resolve_method(method)
    if max_points is not None:
        max_points = positive_int("max_points", max_points)
        if max_points < 3:
            raise ValueError(f"max_points must be at least 3, got {max_points}")
    if pca_dims is not None:
        pca_dims = positive_int("pca_dims", pca_dims)
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    n_neighbors = positive_int("n_neighbors", n_neighbors)
    max_iter = positive_int("max_iter", max_iter)
    if n_threads is not None:
        n_threads = positive_int("n_threads", n_threads)
    if resolved == "tsne" and max_iter < 250:
        raise ValueError(f"max_iter must be at least 250 for t-SNE, got {max_iter}")
    if resolved == "umap" and importlib.util.find_spec("umap") is None:
        raise ImportError(
            "method='umap' needs the umap-learn package: pip install umap-learn "
            "(or use method='tsne', or 'auto' to take UMAP only where it is installed)"
        )

    n_input = data.shape[0]
    notes = []
    indices = np.arange(n_input, dtype=np.int64)
    if max_points is not None and n_input > max_points:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(n_input, size=max_points, replace=False)).astype(np.int64)
        notes.append(
            f"A random {max_points:,} of the {n_input:,} points are shown (seed {seed}), "
            "to keep the map fast."
        )
    data = data[indices]
    count, dims = data.shape
    params: dict[str, Any] = {}

    try:
        from sklearn.decomposition import PCA
    except ImportError as error:  # pragma: no cover - scikit-learn is in the analysis extra
        raise ImportError(
            "Embedding maps need scikit-learn: pip install 'shortcut-detect[analysis]'"
        ) from error

    if resolved == "pca":
        components = min(2, dims, count)
        pca = PCA(n_components=components, random_state=seed)
        coordinates = pca.fit_transform(data)
        explained = float(np.sum(pca.explained_variance_ratio_))
        params["explained_variance"] = explained
        notes.append(f"PCA: the first two components hold {explained:.0%} of the variance.")
    else:
        if pca_dims is not None and dims > pca_dims and count > pca_dims:
            pca = PCA(n_components=pca_dims, svd_solver="randomized", random_state=seed)
            data = pca.fit_transform(data).astype(np.float32)
            params["pca_dims"] = pca_dims
            kept = float(np.sum(pca.explained_variance_ratio_))
            notes.append(
                f"Reduced to {pca_dims} principal components first ({kept:.0%} of the variance)."
            )
        if resolved == "tsne":
            coordinates = _tsne(data, seed, perplexity, max_iter, n_threads, params, notes)
        else:
            coordinates = _umap(data, seed, n_neighbors, params, notes)

    coordinates = np.asarray(coordinates, dtype=np.float32)
    if coordinates.shape[1] < 2:  # one feature: put the points on a line
        coordinates = np.hstack([coordinates, np.zeros((count, 1), dtype=np.float32)])
    label = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}[resolved]
    note = f"{label} map of {count:,} points with {dims} features. " + " ".join(notes)
    return EmbeddingMap(
        coordinates=coordinates,
        indices=indices,
        method=resolved,
        n_input=n_input,
        seed=int(seed),
        note=note.strip(),
        params=params,
        seconds=time.perf_counter() - started,
    )


def _tsne(
    data: np.ndarray,
    seed: int,
    perplexity: float,
    max_iter: int,
    n_threads: int | None,
    params: dict[str, Any],
    notes: list[str],
) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    count = data.shape[0]
    usable = min(float(perplexity), (count - 1) / 3.0)
    if usable < perplexity:
        notes.append(f"Perplexity lowered to {usable:.1f} for {count} points.")
    params.update(perplexity=usable, max_iter=max_iter)
    tsne = TSNE(
        n_components=2,
        perplexity=usable,
        init="pca",
        learning_rate="auto",
        max_iter=max_iter,
        random_state=seed,
    )
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        return tsne.fit_transform(data)


def _umap(
    data: np.ndarray, seed: int, n_neighbors: int, params: dict[str, Any], notes: list[str]
) -> np.ndarray:
    import umap

    usable = min(n_neighbors, data.shape[0] - 1)
    if usable < n_neighbors:
        notes.append(f"n_neighbors lowered to {usable} for {data.shape[0]} points.")
    params["n_neighbors"] = usable
    return umap.UMAP(n_components=2, n_neighbors=usable, random_state=seed).fit_transform(data)


# -- what the map shows ---------------------------------------------------------------------


@dataclass
class MapDescription:
    """How separate groups are on a map, and the sentence that says it.

    Attributes
    ----------
    sentence:
        The one sentence for a report or a figure caption.
    verdict:
        ``"separate"`` (groups form separate islands), ``"partly separate"``, ``"mixed"``
        or ``"undetermined"`` (no class has two groups with enough points).
    neighbour_agreement:
        Share of each point's ``n_neighbors`` nearest same-class neighbours on the map that
        are in its group (averaged over points).
    expected_agreement:
        The same share when groups are shuffled within each class (mean of the null).
    separation:
        ``(observed - expected) / (1 - expected)``: 0 when groups are as mixed as chance,
        1 when every neighbour is in the same group.
    p_value:
        Permutation p-value of ``observed >= null`` (groups shuffled within each class).
    per_class:
        ``{class: {"n", "agreement", "expected", "separation"}}`` for each class used.
    """

    sentence: str
    verdict: str
    n_neighbors: int
    n_permutations: int
    neighbour_agreement: float | None = None
    expected_agreement: float | None = None
    separation: float | None = None
    p_value: float | None = None
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.sentence

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "sentence": self.sentence,
            "verdict": self.verdict,
            "neighbour_agreement": nan_to_none(self.neighbour_agreement),
            "expected_agreement": nan_to_none(self.expected_agreement),
            "separation": nan_to_none(self.separation),
            "p_value": nan_to_none(self.p_value),
            "n_neighbors": self.n_neighbors,
            "n_permutations": self.n_permutations,
            "per_class": to_jsonable(self.per_class),
        }


#: Separation at or above this (and significant) reads "form separate islands".
SEPARATE = 0.5
#: Separation at or above this (and significant) reads "are partly separated".
PARTLY_SEPARATE = 0.15


def is_missing(value: Any) -> bool:
    """``None`` or a float NaN: a point without a value."""
    return value is None or (isinstance(value, (float, np.floating)) and np.isnan(value))


def category_names(values: Sequence[Any]) -> list[Any]:
    """The distinct non-missing values in display order (numbers numerically, text as text)."""
    plain = {item.item() if isinstance(item, np.generic) else item for item in values}
    return sorted(
        (item for item in plain if not is_missing(item)),
        key=lambda item: (
            str(type(item)),
            item if isinstance(item, (int, float)) else str(item),
        ),
    )


def _codes(values: Any, count: int, name: str) -> tuple[list[Hashable], np.ndarray]:
    """Category names and a code per point (-1 for missing values)."""
    array = np.asarray(values, dtype=object).reshape(-1)
    if len(array) != count:
        raise ValueError(f"{name} has {len(array)} entries for {count} map points")
    plain = [item.item() if isinstance(item, np.generic) else item for item in array]
    names = category_names(plain)
    lookup = {item: code for code, item in enumerate(names)}
    codes = [-1 if is_missing(item) else lookup[item] for item in plain]
    return names, np.array(codes, dtype=np.int64)


def _same_class_neighbours(points: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    finder = NearestNeighbors(n_neighbors=k + 1).fit(points)
    neighbours = finder.kneighbors(points, return_distance=False)
    # drop each point itself (duplicates may put it anywhere in its row)
    own = np.arange(len(points))[:, None]
    keep = neighbours != own
    first_k = np.cumsum(keep, axis=1) <= k
    return neighbours[keep & first_k].reshape(len(points), k)


def describe_embedding_map(
    coords: Any,
    labels: Any,
    groups: Any,
    *,
    n_neighbors: int = 10,
    n_permutations: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
    group_name: str = "groups",
) -> MapDescription:
    """Say in one sentence whether ``groups`` form separate islands within each class.

    For every point, the share of its ``n_neighbors`` nearest neighbours *of the same
    class* on the map that belong to its group is measured and averaged. The null shuffles
    the groups within each class (keeping every class's group mix) ``n_permutations``
    times. ``separation = (observed - expected) / (1 - expected)`` is 0 for chance mixing
    and 1 for pure islands; ``>= 0.5`` reads "form separate islands", ``>= 0.15`` "are
    partly separated", both only when the permutation p-value is below ``alpha``.

    Parameters
    ----------
    coords:
        ``(M, 2)`` map coordinates, or an :class:`EmbeddingMap` (then ``labels`` and
        ``groups`` may be given per input point; the mapped ones are taken).
    labels:
        Class per point; ``None`` treats all points as one class (then the sentence does not
        say "within each class"; use it e.g. with ``groups=labels, group_name="classes"``).
    groups:
        Group per point.
    n_neighbors:
        Neighbours per point (lowered for small classes).
    n_permutations:
        Shuffles for the null.
    alpha:
        Significance level.
    seed:
        Seed of the shuffles.
    group_name:
        What the groups are called in the sentence (``"groups"``, ``"hospitals"``).
    """
    n_neighbors = positive_int("n_neighbors", n_neighbors)
    n_permutations = positive_int("n_permutations", n_permutations)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(coords, EmbeddingMap):
        points = coords.coordinates
        groups = coords.values_for_points(groups, "groups")
        if labels is not None:
            labels = coords.values_for_points(labels, "labels")
    else:
        points = np.asarray(coords, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 2:
        raise ValueError(f"coords must be (n_points, 2) map coordinates, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("coords contains NaN or Inf values")
    count = points.shape[0]
    _, group_codes = _codes(groups, count, "groups")
    if labels is None:
        class_names: list[Hashable] = ["all"]
        class_codes = np.zeros(count, dtype=np.int64)
    else:
        class_names, class_codes = _codes(labels, count, "labels")

    rng = np.random.default_rng(seed)
    observed_hits = 0.0
    null_hits = np.zeros(n_permutations)
    used = 0
    per_class: dict[str, dict[str, Any]] = {}
    for code, name in enumerate(class_names):
        members = np.flatnonzero((class_codes == code) & (group_codes >= 0))
        member_groups = group_codes[members]
        if len(np.unique(member_groups)) < 2 or len(members) < 3:
            continue
        k = min(n_neighbors, len(members) - 1)
        neighbours = _same_class_neighbours(points[members], k)
        agree = (member_groups[neighbours] == member_groups[:, None]).mean(axis=1)
        shuffled = np.empty(n_permutations)
        for index in range(n_permutations):
            permuted = rng.permutation(member_groups)
            shuffled[index] = (permuted[neighbours] == permuted[:, None]).mean()
        observed_hits += agree.sum()
        null_hits += shuffled * len(members)
        used += len(members)
        expected = float(shuffled.mean())
        per_class[str(name)] = {
            "n": len(members),
            "agreement": float(agree.mean()),
            "expected": expected,
            "separation": _separation(float(agree.mean()), expected),
        }

    within = " within each class" if labels is not None else ""
    if used == 0:
        reason = (
            "no class has two groups with enough points"
            if labels is not None
            else f"there are fewer than two {group_name}"
        )
        return MapDescription(
            sentence=f"Whether {group_name} separate on the map cannot be told: {reason}.",
            verdict="undetermined",
            n_neighbors=n_neighbors,
            n_permutations=n_permutations,
            per_class=per_class,
        )
    observed = observed_hits / used
    null = null_hits / used
    expected = float(null.mean())
    separation = _separation(observed, expected)
    p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_permutations))
    significant = p_value < alpha
    if significant and separation >= SEPARATE:
        verdict, phrase = "separate", f"{group_name} form separate islands{within}"
    elif significant and separation >= PARTLY_SEPARATE:
        verdict, phrase = "partly separate", f"{group_name} are partly separated{within}"
    else:
        verdict, phrase = "mixed", f"{group_name} are mixed{within}"
    p_text = (
        f"p < {1 / (1 + n_permutations):.2g}"
        if p_value <= 1 / (1 + n_permutations)
        else f"p = {p_value:.2g}"
    )
    sentence = (
        f"{phrase[0].upper()}{phrase[1:]}: {observed:.0%} of each point's nearest "
        f"{'same-class ' if labels is not None else ''}neighbours share its "
        f"{_singular(group_name)}, against {expected:.0%} if {group_name} were mixed "
        f"(separation {separation:.2f}, {p_text})."
    )
    return MapDescription(
        sentence=sentence,
        verdict=verdict,
        neighbour_agreement=float(observed),
        expected_agreement=expected,
        separation=separation,
        p_value=p_value,
        n_neighbors=n_neighbors,
        n_permutations=n_permutations,
        per_class=per_class,
    )


def _separation(observed: float, expected: float) -> float:
    if expected >= 1.0:
        return 0.0
    return float((observed - expected) / (1.0 - expected))


def _singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("sses"):
        return name[:-2]
    return name[:-1] if name.endswith("s") else name
