"""Numbers read off heatmaps: validation, resampling, peaks, entropy, overlap, concentration.

Everything here works on stacks of maps ``(N, *spatial)`` at any resolution (the input
resolution or a layer's native 7x7 / 12x12 grid) and needs only numpy.

Conventions
-----------
- A heatmap is non-negative attention. Its *mass* is its sum; the *attention fraction* of a
  region is the mass inside it divided by the total mass (the seed docs' definition).
- A map whose mass is zero (all zeros, e.g. a constant map after min-max scaling) has no
  distribution: quantities that need one (fractions, entropy, cosine) are NaN for it,
  never a silent 0. Callers count and exclude such samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "area_resize",
    "as_heatmap_stack",
    "concentration_area",
    "entropy",
    "location_words",
    "mass_normalize",
    "mass_overlap",
    "overlap_per_sample",
    "peak_locations",
    "region_location",
    "summarize_values",
]


def as_heatmap_stack(
    heatmaps: Any,
    *,
    name: str = "heatmaps",
    nonnegative: bool = True,
    single_ndim: int = 2,
    keep_float32: bool = False,
) -> np.ndarray:
    """Validate heatmaps and return them as float64 ``(N, *spatial)``.

    Parameters
    ----------
    heatmaps:
        ``(N, H, W)`` (or ``(N, D, H, W)``) array, tensor or list of equal-shape maps; one
        map of ``single_ndim`` dimensions is treated as ``N = 1``.
    name:
        Name used in error messages.
    nonnegative:
        Reject negative values (attention masses must be non-negative).
    single_ndim:
        Number of dimensions of one map (2 for images).
    keep_float32:
        Keep float32 input as it is (no float64 copy of a large stack).
    """
    if hasattr(heatmaps, "detach"):
        heatmaps = heatmaps.detach().cpu().numpy()
    try:
        array = np.asarray(heatmaps)
        if not (keep_float32 and array.dtype == np.float32):
            array = array.astype(np.float64, copy=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric array (N, H, W); could not convert it: {error}"
        ) from error
    if array.ndim == single_ndim:
        array = array[None]
    if array.ndim < 2:
        raise ValueError(f"{name} must be (N, H, W) maps; got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 maps)")
    if 0 in array.shape[1:]:
        raise ValueError(f"{name} has an empty spatial axis: shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))
        raise ValueError(
            f"{name} contain NaN or Inf values (in {bad.size} maps, first at index {bad[0]}); "
            "recompute or clean those maps"
        )
    if nonnegative and array.min() < 0:
        index = int(np.argmin(array.reshape(len(array), -1).min(axis=1)))
        raise ValueError(
            f"{name} must be non-negative attention maps; map {index} has minimum "
            f"{array[index].min():.4g}. Apply ReLU / min-max scaling first (signed "
            "relevance maps are not attention masses)."
        )
    return array


def _area_matrix(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights: the share of target cell ``t`` covered by source cell ``s``.

    Each row sums to 1, so multiplying by it averages (down) or spreads (up) exactly,
    treating every cell as a constant patch.
    """
    scale = target / source
    starts = np.arange(source) * scale
    ends = starts + scale
    cells = np.arange(target)[:, None]
    overlap = np.minimum(cells + 1, ends[None, :]) - np.maximum(cells, starts[None, :])
    return np.clip(overlap, 0.0, None)


def area_resize(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``(N, *spatial)`` maps to ``size`` by exact area averaging.

    Each output cell is the area-weighted mean of the input cells it covers, so a
    down-sampled map keeps the mean (and, scaled by the cell count, the mass distribution)
    of the original; a binary mask becomes the covered share of each cell.
    """
    array = np.asarray(maps)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    size = tuple(int(s) for s in size)
    if len(size) != array.ndim - 1:
        raise ValueError(f"size {size} does not match maps with spatial shape {array.shape[1:]}")
    if any(s < 1 for s in size):
        raise ValueError(f"size must be positive, got {size}")
    for axis, (source, target) in enumerate(zip(array.shape[1:], size), start=1):
        if source == target:
            continue
        weights = _area_matrix(source, target)  # float64: the result is float64
        array = np.moveaxis(np.tensordot(array, weights, axes=([axis], [1])), -1, axis)
    return array.astype(np.float64, copy=False)


def mass_normalize(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its sum; maps with zero mass become NaN (no distribution)."""
    array = np.asarray(maps, dtype=np.float64)
    mass = array.reshape(len(array), -1).sum(axis=1)
    shape = (len(array),) + (1,) * (array.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass.reshape(shape) > 0, array / mass.reshape(shape), np.nan)


def peak_locations(heatmaps: Any) -> np.ndarray:
    """Index of each map's maximum: int ``(N, ndim)`` (row, column for 2-D maps).

    A single ``(H, W)`` map gives ``(1, 2)``. Ties go to the first maximum in C order, so a
    constant (or all-zero) map peaks at the origin; check :func:`entropy` to tell such
    maps apart.
    """
    array = as_heatmap_stack(heatmaps, nonnegative=False)
    flat = array.reshape(len(array), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, array.shape[1:]), axis=1).astype(np.int64)


def entropy(heatmaps: Any) -> np.ndarray:
    """Normalised spatial entropy of each map's mass distribution, ``(N,)`` in [0, 1].

    0 means all attention on one cell, 1 means spread evenly over the map (a constant
    map). Maps with zero mass have no distribution and give NaN. A one-cell map gives 0.
    """
    array = as_heatmap_stack(heatmaps)
    probabilities = mass_normalize(array).reshape(len(array), -1)
    cells = probabilities.shape[1]
    if cells == 1:
        return np.where(np.isnan(probabilities[:, 0]), np.nan, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    values = -terms.sum(axis=1) / np.log(cells)
    values[np.isnan(probabilities[:, 0])] = np.nan
    return np.clip(values, 0.0, 1.0)


def overlap_per_sample(
    first: Any, second: Any, threshold: float = 0.5, second_threshold: float | None = None
) -> dict[str, np.ndarray]:
    """Per-sample dice, IoU (of the maps thresholded with ``>=``) and cosine, ``(N,)`` each.

    Same formulas as :meth:`GradCAMHeatmapGenerator.calculate_overlap` (which averages
    them), except that undefined values are NaN instead of 0: dice and IoU when both
    thresholded maps are empty, cosine when either map is all zeros.

    Parameters
    ----------
    first, second:
        ``(N, *spatial)`` maps of the same shape.
    threshold:
        Threshold for ``first`` (and for ``second`` unless ``second_threshold`` is given).
    """
    a = as_heatmap_stack(first, name="first maps", nonnegative=False)
    b = as_heatmap_stack(second, name="second maps", nonnegative=False)
    if a.shape != b.shape:
        raise ValueError(f"Maps must share the same shape to compare them: {a.shape} vs {b.shape}")
    second_threshold = threshold if second_threshold is None else second_threshold
    flat_a = a.reshape(len(a), -1)
    flat_b = b.reshape(len(b), -1)
    bin_a = flat_a >= threshold
    bin_b = flat_b >= second_threshold
    intersection = (bin_a & bin_b).sum(axis=1).astype(np.float64)
    union = (bin_a | bin_b).sum(axis=1).astype(np.float64)
    sizes = (bin_a.sum(axis=1) + bin_b.sum(axis=1)).astype(np.float64)
    norms = np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sizes > 0, 2.0 * intersection / sizes, np.nan)
        iou = np.where(union > 0, intersection / union, np.nan)
        cosine = np.where(norms > 0, (flat_a * flat_b).sum(axis=1) / norms, np.nan)
    return {"dice": dice, "iou": iou, "cosine": np.clip(cosine, -1.0, 1.0)}


def mass_overlap(first: Any, second: Any) -> np.ndarray:
    """Shared attention mass of two map stacks: ``sum(min(p, q))`` per sample, in [0, 1].

    ``p`` and ``q`` are the maps divided by their sums; 1 means the same distribution, 0
    no cell in common. It equals ``1 - total variation distance``. NaN where either map
    has zero mass.
    """
    p = mass_normalize(as_heatmap_stack(first, name="first maps"))
    q = mass_normalize(as_heatmap_stack(second, name="second maps"))
    if p.shape != q.shape:
        raise ValueError(f"Maps must share the same shape to compare them: {p.shape} vs {q.shape}")
    return np.minimum(p, q).reshape(len(p), -1).sum(axis=1)


def concentration_area(heatmaps: Any, mass: float = 0.5) -> np.ndarray:
    """Smallest share of the map's area that holds ``mass`` of its attention, ``(N,)``.

    Small values mean attention concentrated in a small region (a constant map gives
    ``mass``; all mass in one cell gives ``1 / cells``). NaN for maps with zero mass.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    array = as_heatmap_stack(heatmaps)
    probabilities = mass_normalize(array).reshape(len(array), -1)
    cells = probabilities.shape[1]
    ordered = -np.sort(-probabilities, axis=1)
    cumulative = np.cumsum(ordered, axis=1)
    needed = (cumulative < mass - 1e-12).sum(axis=1) + 1
    result = np.minimum(needed, cells) / cells
    return np.where(np.isnan(probabilities[:, 0]), np.nan, result)


def region_location(region: np.ndarray) -> str:
    """Where a bool region lies, in words (:func:`location_words` of its centroid).

    A 3-D region ``(D, H, W)`` is described by where it lies in the ``(H, W)`` plane, over
    all slices.
    """
    if region.ndim == 3:
        region = region.any(axis=0)
    rows, cols = np.nonzero(region)
    return location_words((rows.mean(), cols.mean()), region.shape)


def location_words(position: Sequence[float], shape: Sequence[int]) -> str:
    """Where a (row, column) point lies in a map, in words: ``"top-left"``, ``"centre"``..."""
    row, column = float(position[0]), float(position[1])
    height, width = shape[-2], shape[-1]
    vertical = ("top", "middle", "bottom")[min(2, int(3 * (row + 0.5) / height))]
    horizontal = ("left", "centre", "right")[min(2, int(3 * (column + 0.5) / width))]
    if vertical == "middle" and horizontal == "centre":
        return "centre"
    if vertical == "middle":
        return f"middle-{horizontal}"
    return f"{vertical}-{horizontal}" if horizontal != "centre" else f"{vertical}-centre"


def summarize_values(values: Any) -> dict[str, float | int | None]:
    """Distribution summary of a 1-D array that may hold NaN (undefined) entries.

    Returns ``n`` (defined values), ``n_undefined``, ``mean``, ``std``, ``median``,
    ``q25``, ``q75``, ``min``, ``max`` (``None`` when there is no defined value).
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    defined = array[~np.isnan(array)]
    summary: dict[str, float | int | None] = {
        "n": int(defined.size),
        "n_undefined": int(array.size - defined.size),
    }
    if defined.size == 0:
        summary.update(dict.fromkeys(("mean", "std", "median", "q25", "q75", "min", "max")))
        return summary
    q25, median, q75 = np.percentile(defined, [25, 50, 75])
    summary.update(
        mean=float(defined.mean()),
        std=float(defined.std()),
        median=float(median),
        q25=float(q25),
        q75=float(q75),
        min=float(defined.min()),
        max=float(defined.max()),
    )
    return summary
