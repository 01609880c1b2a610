"""Heatmaps for a whole image set, computed batch by batch with a generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from shortcut_detect.common.validation import positive_int
from shortcut_detect.results import HeatmapGenerator

__all__ = ["check_batch_size", "heatmaps_from_images", "slice_target"]


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as a positive int, or a clear error."""
    return positive_int("batch_size", batch_size)


def slice_target(target: Any, start: int, stop: int, n_samples: int, name: str = "target") -> Any:
    """The part of a per-sample target that belongs to samples ``start:stop``.

    ``None`` and a single class pass through unchanged; a sequence must have one entry per
    sample.
    """
    if target is None or np.ndim(target) == 0:
        return target
    values = target.detach().cpu().numpy() if hasattr(target, "detach") else np.asarray(target)
    values = values.reshape(-1)
    if values.size == 1:
        return values[0].item()
    if values.size != n_samples:
        raise ValueError(
            f"{name} has {values.size} entries for {n_samples} samples; give one class for "
            "all samples, one per sample, or None for the predicted class"
        )
    return values[start:stop]


def heatmaps_from_images(
    generator: HeatmapGenerator,
    images: Any,
    *,
    batch_size: int = 32,
    head: str | int = "logits",
    target: Any = None,
) -> np.ndarray:
    """Heatmaps ``(N, H, W)`` of ``images`` ``(N, C, H, W)`` via ``generator.generate_heatmap``.

    Parameters
    ----------
    generator:
        Something that makes heatmaps (:class:`~shortcut_detect.results.HeatmapGenerator`:
        anything with ``generate_heatmap(inputs, head, target_index)``, e.g. a
        :class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator`).
    images:
        ``(N, C, H, W)`` array or tensor (a volume ``(N, C, D, H, W)`` works too).
    batch_size:
        Images per forward pass.
    head, target:
        Passed to ``generate_heatmap``; ``target`` may hold one class per sample.
    """
    if not isinstance(generator, HeatmapGenerator):
        raise TypeError(
            "Computing heatmaps from images needs a generator with generate_heatmap() (a "
            f"GradCAMHeatmapGenerator); got {type(generator).__name__}"
        )
    batch_size = check_batch_size(batch_size)
    n_samples = len(images)
    if n_samples == 0:
        raise ValueError("images is empty (0 samples)")
    parts = []
    for start in range(0, n_samples, batch_size):
        stop = min(start + batch_size, n_samples)
        part_target = slice_target(target, start, stop, n_samples)
        parts.append(np.asarray(generator.generate_heatmap(images[start:stop], head, part_target)))
    return np.concatenate(parts, axis=0)
