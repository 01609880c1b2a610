"""How much attention falls in a known shortcut region (a watermark, a corner tag)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortcut_detect.analysis.maps import area_resize, as_heatmap_stack
from shortcut_detect.common import nan_to_none

__all__ = [
    "RegionAttention",
    "attention_in_region",
    "box_mask",
    "is_box",
    "mask_stack",
    "region_coverage",
]


def is_box(region: Any) -> bool:
    """Whether ``region`` is a box: 4 numbers (2-D) or 6 (volumes), not a mask array."""
    if isinstance(region, (tuple, list)) and len(region) in (4, 6):
        return all(np.ndim(value) == 0 for value in region)
    return isinstance(region, np.ndarray) and region.ndim == 1 and region.size in (4, 6)


def box_mask(
    box: Sequence[float], spatial: Sequence[int], *, frame: str = "image", hint: str = ""
) -> np.ndarray:
    """Bool mask of ``spatial`` size set inside ``box``.

    Parameters
    ----------
    box:
        ``(x0, y0, x1, y1)``, or ``(x0, y0, z0, x1, y1, z1)`` for volumes: whole pixels,
        ``x`` = column, ``y`` = row, ``z`` = depth; upper bounds exclusive, i.e.
        ``mask[y0:y1, x0:x1]``.
    spatial:
        ``(H, W)`` or ``(D, H, W)``.
    frame:
        What the box lies in, for error messages (e.g. ``"image"``, ``"6x6 grid"``).
    hint:
        Appended to the message of a box outside ``spatial``.
    """
    spatial = tuple(int(s) for s in spatial)
    ndim = len(spatial)
    if len(box) != 2 * ndim:
        form = "(x0, y0, x1, y1)" if ndim == 2 else "(x0, y0, z0, x1, y1, z1)"
        raise ValueError(
            f"A box for {ndim}-D images has {2 * ndim} numbers {form}; got {len(box)}: {tuple(box)}"
        )
    values = [float(v) for v in box]
    low, high = values[:ndim], values[ndim:]
    # Box order is x (column), y (row)[, z (depth)]; array axes are ([depth,] row, column).
    axes_size = list(reversed(spatial[-2:])) + ([spatial[0]] if ndim == 3 else [])
    for name, lo, hi, size in zip("xyz", low, high, axes_size):
        if not 0 <= lo < hi <= size:
            raise ValueError(
                f"Box {tuple(box)} is empty or outside the {frame}: need 0 <= {name}0 < "
                f"{name}1 <= {size} ({name}1 exclusive) for spatial size {spatial}{hint}"
            )
    if any(v != int(v) for v in values):
        raise ValueError(f"Box coordinates must be whole pixels, got {tuple(box)}")
    mask = np.zeros(spatial, dtype=bool)
    slices = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))
    mask[slices[::-1]] = True  # box order is the reverse of the array axes
    return mask


def mask_stack(region: Any, n_samples: int, ndim: int, *, per: str = "image") -> np.ndarray:
    """A region given as masks, validated: ``(1 or N, *spatial)`` of bool or numbers in [0, 1].

    Parameters
    ----------
    region:
        One mask ``spatial`` for all samples or one per sample ``(N, *spatial)``; numpy
        array, tensor or nested lists.
    n_samples:
        ``N``.
    ndim:
        Spatial dimensions of a mask (2, or 3 for volumes).
    per:
        What a mask belongs to, for error messages (``"image"``, ``"heatmap"``).
    """
    if hasattr(region, "detach"):
        region = region.detach().cpu().numpy()
    masks = np.asarray(region)
    if masks.dtype == object or not (np.issubdtype(masks.dtype, np.number) or masks.dtype == bool):
        raise TypeError(
            "region must be a box (x0, y0, x1, y1) or a mask array; got "
            f"{type(region).__name__} of dtype {masks.dtype}"
        )
    if masks.ndim == ndim:
        masks = masks[None]
    if masks.ndim != ndim + 1:
        raise ValueError(
            f"Region mask of shape {masks.shape} does not fit {ndim}-D {per}s: give one "
            f"{ndim}-D mask for all, one per {per} (N, ...), or a box (x0, y0, x1, y1)"
        )
    if masks.shape[0] not in (1, n_samples):
        raise ValueError(
            f"Got {masks.shape[0]} region masks for {n_samples} {per}s; give one mask per "
            f"{per} or one for all"
        )
    if masks.dtype != bool and (not np.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1):
        raise ValueError(
            "Region masks must hold values in [0, 1] (bool or a soft mask); got range "
            f"[{np.nanmin(masks):.4g}, {np.nanmax(masks):.4g}]"
        )
    return masks


def region_coverage(
    region: Any,
    grid: Sequence[int],
    n_samples: int,
    *,
    image_size: Sequence[int] | None = None,
) -> np.ndarray:
    """The share of each heatmap cell covered by the region: float ``(N, H, W)`` in [0, 1].

    Parameters
    ----------
    region:
        A box ``(x0, y0, x1, y1)`` in pixel coordinates (``x`` = column, ``y`` = row;
        ``x0``/``y0`` inclusive, ``x1``/``y1`` exclusive, like ``mask[y0:y1, x0:x1]``), or
        a mask ``(H', W')`` shared by all samples or ``(N, H', W')`` per sample (bool, or
        numbers in [0, 1]). A mask at another resolution than the heatmaps is area-resampled
        onto the heatmap grid, so each cell gets the share of it the mask covers.
    grid:
        ``(H, W)`` of the heatmaps.
    n_samples:
        ``N``, the number of heatmaps.
    image_size:
        ``(H', W')`` the box coordinates refer to (e.g. the input image size when the
        heatmaps are a layer's native 12x12 maps). Default: the heatmap grid.
    """
    grid = tuple(int(s) for s in grid)
    if len(grid) not in (2, 3):
        raise ValueError(f"Regions are defined on 2-D or 3-D maps; got heatmaps with grid {grid}")
    if len(grid) == 3:  # volumes: regions are voxel masks (boxes are drawn by the data layer)
        masks = mask_stack(region, n_samples, 3, per="heatmap").astype(np.float64)
    elif is_box(region):
        size = tuple(int(s) for s in (image_size or grid))
        hint = "" if image_size else "; pass image_size=(H, W) if the box is in image pixels"
        frame = f"{size[0]}x{size[1]} grid"
        masks = box_mask(region, size, frame=frame, hint=hint)[None].astype(np.float64)
    else:
        masks = mask_stack(region, n_samples, 2, per="heatmap").astype(np.float64)
    if masks.shape[1:] != grid:
        masks = area_resize(masks, grid)
    return np.broadcast_to(masks, (n_samples, *grid))


@dataclass
class RegionAttention:
    """Attention inside a region, per sample and in summary.

    Samples whose region is empty (e.g. no marker drawn on that image) and heatmaps with
    zero mass have no defined fraction: their ``fractions`` are NaN, they are left out
    of every mean and share, and they are counted in ``n_empty_region`` /
    ``n_empty_heatmap`` (the latter among samples that do have a region, so the two
    counts never overlap).

    Attributes
    ----------
    fractions:
        ``(N,)`` share of each heatmap's mass inside the region (``heatmap / heatmap.sum()``
        summed over the region; a partially covered cell counts by its covered share).
        This is also the "energy-based pointing game" proportion of Score-CAM.
    area_shares:
        ``(N,)`` share of the map area the region covers (NaN where it is empty).
    pointing_hits:
        ``(N,)`` bool: the heatmap's peak lies in a cell the region covers, or within
        ``pointing_tolerance`` cells of it (the pointing game of Zhang et al.). False for
        excluded samples (see ``valid``).
    valid:
        ``(N,)`` bool: the sample has a non-empty region and a heatmap with mass.
    mean, median:
        Of ``fractions`` over valid samples (NaN when none is valid).
    share_above_threshold:
        Share of valid samples whose fraction is above ``threshold``.
    pointing_accuracy:
        Share of valid samples that are pointing hits.
    mean_area_share:
        Mean region area share over valid samples.
    enrichment:
        ``mean / mean_area_share``: 1 is what evenly spread attention gives; 3 means three
        times more attention on the region than its size warrants.
    """

    fractions: np.ndarray
    area_shares: np.ndarray
    pointing_hits: np.ndarray
    valid: np.ndarray
    threshold: float
    mean: float
    median: float
    share_above_threshold: float
    pointing_accuracy: float
    mean_area_share: float
    enrichment: float
    n_samples: int
    n_valid: int
    n_empty_region: int
    n_empty_heatmap: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, per_sample: bool = True) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``); ``per_sample=False`` leaves out arrays."""
        result: dict[str, Any] = {
            "n_samples": self.n_samples,
            "n_valid": self.n_valid,
            "n_empty_region": self.n_empty_region,
            "n_empty_heatmap": self.n_empty_heatmap,
            "threshold": self.threshold,
            "mean": nan_to_none(self.mean),
            "median": nan_to_none(self.median),
            "share_above_threshold": nan_to_none(self.share_above_threshold),
            "pointing_accuracy": nan_to_none(self.pointing_accuracy),
            "mean_area_share": nan_to_none(self.mean_area_share),
            "enrichment": nan_to_none(self.enrichment),
        }
        if per_sample:
            result["fractions"] = [nan_to_none(v) for v in self.fractions]
            result["area_shares"] = [nan_to_none(v) for v in self.area_shares]
            result["pointing_hits"] = [bool(v) for v in self.pointing_hits]
            result["valid"] = [bool(v) for v in self.valid]
        return result


def attention_in_region(
    heatmaps: Any,
    region: Any,
    *,
    threshold: float = 0.1,
    image_size: Sequence[int] | None = None,
    pointing_tolerance: int = 0,
) -> RegionAttention:
    """Share of each heatmap's attention inside a region, and how often it points there.

    Parameters
    ----------
    heatmaps:
        Non-negative ``(N, H, W)`` maps (or one ``(H, W)``), at any resolution; volumes'
        ``(N, D, H, W)`` maps take a mask region.
    region:
        A box ``(x0, y0, x1, y1)`` (pixels; ``x`` = column, ``y`` = row; ``x1`` and ``y1``
        **exclusive**, i.e. the box is ``mask[y0:y1, x0:x1]``), or a mask ``(H', W')`` for
        all samples or ``(N, H', W')`` per sample. Masks at another resolution are
        area-resampled onto the heatmap grid.
    threshold:
        ``share_above_threshold`` counts samples with more than this fraction of attention
        in the region (the seed docs use 0.1: "> 10% of attention on the shortcut").
    image_size:
        ``(H', W')`` the box coordinates refer to, when it is not the heatmap grid.
    pointing_tolerance:
        A peak within this many heatmap cells (Chebyshev distance) of the region still
        counts as a pointing hit; 0 requires the peak on the region. Upsampled CAMs can
        peak a pixel or two beside a small marker, one layer cell away.

    Returns
    -------
    RegionAttention
        Samples with an empty region (no marker) or an all-zero heatmap get NaN fractions,
        are excluded from the summary numbers, and are counted.

    Examples
    --------
    >>> result = attention_in_region(heatmaps, data.masks)        # doctest: +SKIP
    >>> result.mean, result.enrichment, result.pointing_accuracy  # doctest: +SKIP
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a fraction in [0, 1], got {threshold}")
    if isinstance(pointing_tolerance, bool) or int(pointing_tolerance) != pointing_tolerance:
        raise ValueError(f"pointing_tolerance must be a whole number, got {pointing_tolerance!r}")
    if pointing_tolerance < 0:
        raise ValueError(f"pointing_tolerance must be >= 0, got {pointing_tolerance}")
    maps = as_heatmap_stack(heatmaps)
    if maps.ndim not in (3, 4):
        raise ValueError(
            f"heatmaps must be 2-D maps (N, H, W) or 3-D maps (N, D, H, W); got shape {maps.shape}"
        )
    n_samples = len(maps)
    coverage = region_coverage(region, maps.shape[1:], n_samples, image_size=image_size)

    flat_maps = maps.reshape(n_samples, -1)
    flat_cover = coverage.reshape(n_samples, -1)
    mass = flat_maps.sum(axis=1)
    region_area = flat_cover.sum(axis=1)
    empty_region = region_area <= 0
    empty_heatmap = mass <= 0
    valid = ~empty_region & ~empty_heatmap
    inside = (flat_maps * flat_cover).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(valid, inside / mass, np.nan)
    area_shares = np.where(empty_region, np.nan, region_area / flat_cover.shape[1])
    peaks = flat_maps.argmax(axis=1)
    touched = coverage > 0
    if pointing_tolerance > 0:
        from scipy.ndimage import maximum_filter

        size = (1,) + (2 * int(pointing_tolerance) + 1,) * (maps.ndim - 1)
        touched = maximum_filter(touched, size=size, mode="constant", cval=False)
    pointing_hits = valid & touched.reshape(n_samples, -1)[np.arange(n_samples), peaks]

    n_valid = int(valid.sum())
    if n_valid:
        mean = float(fractions[valid].mean())
        median = float(np.median(fractions[valid]))
        above = float((fractions[valid] > threshold).mean())
        pointing = float(pointing_hits[valid].mean())
        mean_area = float(area_shares[valid].mean())
        enrichment = mean / mean_area
    else:
        mean = median = above = pointing = mean_area = enrichment = float("nan")
    return RegionAttention(
        fractions=fractions,
        area_shares=area_shares,
        pointing_hits=pointing_hits,
        valid=valid,
        threshold=float(threshold),
        mean=mean,
        median=median,
        share_above_threshold=above,
        pointing_accuracy=pointing,
        mean_area_share=mean_area,
        enrichment=enrichment,
        n_samples=n_samples,
        n_valid=n_valid,
        n_empty_region=int(empty_region.sum()),
        n_empty_heatmap=int((empty_heatmap & ~empty_region).sum()),
    )
