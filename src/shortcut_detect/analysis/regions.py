"""How much attention falls in a known shortcut region (a watermark, a corner tag)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortcut_detect.analysis.maps import area_resize, as_heatmap_stack

__all__ = ["RegionAttention", "attention_in_region", "region_coverage"]

Box = tuple[float, float, float, float]


def _is_box(region: Any) -> bool:
    if isinstance(region, (tuple, list)) and len(region) == 4:
        return all(np.ndim(value) == 0 for value in region)
    return isinstance(region, np.ndarray) and region.shape == (4,)


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
    if len(grid) != 2:
        raise ValueError(f"Regions are defined on 2-D maps; got heatmaps with grid {grid}")
    if _is_box(region):
        size = tuple(int(s) for s in (image_size or grid))
        x0, y0, x1, y1 = (float(v) for v in region)
        if not (0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]):
            hint = "" if image_size else "; pass image_size=(H, W) if the box is in image pixels"
            raise ValueError(
                f"Box (x0, y0, x1, y1)={tuple(region)} is empty or outside the {size[0]}x"
                f"{size[1]} grid (need 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, x1/y1 "
                f"exclusive){hint}"
            )
        if any(float(v) != int(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"Box coordinates must be whole pixels, got {tuple(region)}")
        mask = np.zeros(size, dtype=np.float64)
        mask[int(y0) : int(y1), int(x0) : int(x1)] = 1.0
        masks = mask[None]
    else:
        if hasattr(region, "detach"):
            region = region.detach().cpu().numpy()
        masks = np.asarray(region)
        if masks.dtype == object or not (
            np.issubdtype(masks.dtype, np.number) or masks.dtype == bool
        ):
            raise TypeError(
                "region must be a box (x0, y0, x1, y1) or a mask array (H, W) / (N, H, W); "
                f"got {type(region).__name__} of dtype {masks.dtype}"
            )
        masks = masks.astype(np.float64)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise ValueError(
                f"A region mask must be (H, W) or (N, H, W); got shape {masks.shape}. "
                "A box must be 4 numbers (x0, y0, x1, y1)."
            )
        if masks.shape[0] not in (1, n_samples):
            raise ValueError(
                f"Got {masks.shape[0]} region masks for {n_samples} heatmaps; give one mask "
                "per heatmap or one (H, W) mask for all"
            )
        if not np.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
            raise ValueError(
                "Region masks must hold values in [0, 1] (bool or a soft mask); got range "
                f"[{np.nanmin(masks):.4g}, {np.nanmax(masks):.4g}]"
            )
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
            "mean": _none_if_nan(self.mean),
            "median": _none_if_nan(self.median),
            "share_above_threshold": _none_if_nan(self.share_above_threshold),
            "pointing_accuracy": _none_if_nan(self.pointing_accuracy),
            "mean_area_share": _none_if_nan(self.mean_area_share),
            "enrichment": _none_if_nan(self.enrichment),
        }
        if per_sample:
            result["fractions"] = [_none_if_nan(v) for v in self.fractions]
            result["area_shares"] = [_none_if_nan(v) for v in self.area_shares]
            result["pointing_hits"] = [bool(v) for v in self.pointing_hits]
            result["valid"] = [bool(v) for v in self.valid]
        return result


def _none_if_nan(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


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
        Non-negative ``(N, H, W)`` maps (or one ``(H, W)``), at any resolution.
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
    if maps.ndim != 3:
        raise ValueError(f"heatmaps must be 2-D maps (N, H, W); got shape {maps.shape}")
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

        size = (1, 2 * int(pointing_tolerance) + 1, 2 * int(pointing_tolerance) + 1)
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
