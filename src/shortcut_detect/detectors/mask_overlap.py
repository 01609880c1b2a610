"""Detector: how much of a model's attention lands on known shortcut regions (masks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.analysis.maps import as_heatmap_stack, overlap_per_sample
from shortcut_detect.analysis.regions import RegionAttention, attention_in_region, region_coverage
from shortcut_detect.common.risk import Risk
from shortcut_detect.common.serialization import nan_to_none
from shortcut_detect.detectors.base import BaseDetector
from shortcut_detect.results import HeatmapGenerator

__all__ = ["GradCAMMaskOverlapDetector"]


class GradCAMMaskOverlapDetector(BaseDetector):
    """Attention on shortcut masks (a watermark, a corner tag): share, overlap, pointing.

    Parameters
    ----------
    threshold:
        Heatmaps are thresholded at this share of their own maximum (``>=``) for dice /
        IoU with the mask; for min-max scaled Grad-CAM maps (maximum 1) that is the value
        itself, and raw layer-resolution maps work the same way.
    mask_threshold:
        Masks (after resampling onto the heatmap grid, so soft at cell borders) are
        thresholded at this value for dice / IoU.
    attention_threshold:
        ``share_above_threshold`` counts samples with more than this fraction of their
        attention in the mask (the seed docs use 10%).
    high_enrichment, moderate_enrichment:
        Risk levels: attention in the mask relative to the mask's share of the image
        (``enrichment``) at or above these values gives HIGH / MODERATE risk.
    head, target:
        What to explain when heatmaps are computed from images.

    Attributes
    ----------
    heatmaps_:
        The ``(N, H, W)`` heatmaps used.
    region_:
        The :class:`~shortcut_detect.analysis.regions.RegionAttention` result.
    per_sample_:
        ``{"attention_in_mask", "dice", "iou", "cosine", "pointing_hit", "valid"}`` arrays.

    Examples
    --------
    >>> det = GradCAMMaskOverlapDetector().fit(heatmaps, data.masks)   # doctest: +SKIP
    >>> det.get_report()["metrics"]["attention_in_mask_mean"]           # doctest: +SKIP
    """

    name = "gradcam_mask_overlap"

    def __init__(
        self,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        *,
        attention_threshold: float = 0.1,
        high_enrichment: float = 3.0,
        moderate_enrichment: float = 1.5,
        head: str | int = "logits",
        target: Any = None,
    ) -> None:
        self.threshold = threshold
        self.mask_threshold = mask_threshold
        self.attention_threshold = attention_threshold
        self.high_enrichment = high_enrichment
        self.moderate_enrichment = moderate_enrichment
        self.head = head
        self.target = target

    def validate_params(self) -> None:
        """Check every parameter (``fit`` calls this first)."""
        for name in ("threshold", "mask_threshold", "attention_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 < self.moderate_enrichment <= self.high_enrichment:
            raise ValueError(
                "Need 0 < moderate_enrichment <= high_enrichment, got "
                f"{self.moderate_enrichment} and {self.high_enrichment}"
            )

    def fit(
        self,
        heatmaps: Any = None,
        masks: Any = None,
        *,
        generator: HeatmapGenerator | None = None,
        images: Any = None,
        batch_size: int = 32,
        image_size: Sequence[int] | None = None,
    ) -> GradCAMMaskOverlapDetector:
        """Measure attention on the masks.

        Parameters
        ----------
        heatmaps:
            Non-negative ``(N, H, W)`` maps (any resolution). Omit to compute them from
            ``images`` with ``generator``.
        masks:
            Shortcut region per sample ``(N, H', W')``, one for all ``(H', W')``, or a box
            ``(x0, y0, x1, y1)`` (pixels, ``x1``/``y1`` exclusive). Samples with an empty
            mask (no shortcut present) are skipped and counted.
        generator, images, batch_size:
            A :class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator` and ``(N, C, H, W)``
            images, used when ``heatmaps`` is not given.
        image_size:
            ``(H', W')`` a box refers to when the heatmaps are at another resolution;
            defaults to the images' size when images are given.
        """
        self.validate_params()
        if masks is None:
            raise ValueError(
                "GradCAMMaskOverlapDetector needs masks: the shortcut region per sample "
                "(N, H, W), one (H, W) mask, or a box (x0, y0, x1, y1)"
            )
        if heatmaps is None:
            if generator is None or images is None:
                raise ValueError(
                    "Give heatmaps (N, H, W), or a generator and images (N, C, H, W) to "
                    "compute them"
                )
            heatmaps = heatmaps_from_images(
                generator, images, batch_size=batch_size, head=self.head, target=self.target
            )
        maps = as_heatmap_stack(heatmaps)
        if maps.ndim not in (3, 4):
            raise ValueError(f"heatmaps must be (N, H, W) or (N, D, H, W); got shape {maps.shape}")
        if image_size is None and images is not None:
            image_size = tuple(np.shape(images)[-2:])
        region = attention_in_region(
            maps, masks, threshold=self.attention_threshold, image_size=image_size
        )
        if region.n_valid == 0:
            raise ValueError(
                f"No sample has both a non-empty mask and a heatmap with mass "
                f"({region.n_empty_region} empty masks, {region.n_empty_heatmap} all-zero "
                "heatmaps); there is no shortcut region to measure attention in"
            )
        self.heatmaps_, self.region_ = maps, region
        self.per_sample_ = self._per_sample(maps, masks, region, image_size)
        self._report(region, self.per_sample_)
        return self

    def _per_sample(
        self,
        maps: np.ndarray,
        masks: Any,
        region: RegionAttention,
        image_size: Sequence[int] | None,
    ) -> dict[str, np.ndarray]:
        """Attention share, dice, IoU, cosine and pointing per sample (NaN where invalid)."""
        coverage = region_coverage(masks, maps.shape[1:], len(maps), image_size=image_size)
        binary_masks = (coverage >= self.mask_threshold).astype(np.float64)
        peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, *([1] * (maps.ndim - 1)))
        scaled = np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)
        overlap = overlap_per_sample(scaled, binary_masks, self.threshold, 0.5)
        cosine = overlap_per_sample(maps, coverage, self.threshold)["cosine"]
        valid = region.valid
        return {
            "attention_in_mask": region.fractions,
            "mask_area_share": region.area_shares,
            "dice": np.where(valid, overlap["dice"], np.nan),
            "iou": np.where(valid, overlap["iou"], np.nan),
            "cosine": np.where(valid, cosine, np.nan),
            "pointing_hit": region.pointing_hits,
            "valid": valid,
        }

    def _report(self, region: RegionAttention, per_sample: dict[str, np.ndarray]) -> None:
        """Metrics, risk, finding and per-sample rows from the measurements."""
        valid = per_sample["valid"]

        def valid_mean(values: np.ndarray) -> float | None:
            defined = values[valid & ~np.isnan(values)]
            return float(defined.mean()) if defined.size else None

        metrics = {
            "n_samples": region.n_samples,
            "n_valid": region.n_valid,
            "n_empty_masks": region.n_empty_region,
            "n_empty_heatmaps": region.n_empty_heatmap,
            "attention_in_mask_mean": region.mean,
            "attention_in_mask_median": region.median,
            "attention_threshold": float(self.attention_threshold),
            "share_above_attention_threshold": region.share_above_threshold,
            "mask_area_share_mean": region.mean_area_share,
            "enrichment": region.enrichment,
            "pointing_accuracy": region.pointing_accuracy,
            "dice_mean": valid_mean(per_sample["dice"]),
            "iou_mean": valid_mean(per_sample["iou"]),
            "cosine_mean": valid_mean(per_sample["cosine"]),
            "threshold": float(self.threshold),
            "mask_threshold": float(self.mask_threshold),
        }
        if region.enrichment >= self.high_enrichment:
            risk = Risk.HIGH
        elif region.enrichment >= self.moderate_enrichment:
            risk = Risk.MODERATE
        else:
            risk = Risk.LOW
        skipped = (
            f"; {region.n_empty_region} samples without a mask skipped"
            if region.n_empty_region
            else ""
        )
        finding = (
            f"{region.mean:.1%} of attention falls in the shortcut mask on average, "
            f"{region.enrichment:.1f}x its {region.mean_area_share:.1%} share of the image; "
            f"{region.share_above_threshold:.0%} of samples put more than "
            f"{self.attention_threshold:.0%} there and the heatmap peak lies in it for "
            f"{region.pointing_accuracy:.0%} ({region.n_valid} samples{skipped})."
        )
        rows = [
            {
                "index": index,
                "valid": bool(valid[index]),
                "attention_in_mask": nan_to_none(per_sample["attention_in_mask"][index]),
                "mask_area_share": nan_to_none(per_sample["mask_area_share"][index]),
                "dice": nan_to_none(per_sample["dice"][index]),
                "iou": nan_to_none(per_sample["iou"][index]),
                "cosine": nan_to_none(per_sample["cosine"][index]),
                "pointing_hit": bool(per_sample["pointing_hit"][index]),
            }
            for index in range(region.n_samples)
        ]
        self._make_report(metrics, risk, finding, {"per_sample": rows})
