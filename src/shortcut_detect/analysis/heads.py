"""Overlap of two prediction heads' attention (e.g. disease vs a protected attribute),
aggregated over a whole image set."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from shortcut_detect.analysis.batches import check_batch_size, slice_target
from shortcut_detect.analysis.groups import group_codes
from shortcut_detect.analysis.maps import mass_overlap, overlap_per_sample, summarize_values
from shortcut_detect.results import AttentionOverlapGenerator, HeadExplainer

__all__ = ["head_overlap_over_dataset"]

METRICS = ("dice", "iou", "cosine", "mass_overlap")


def head_overlap_over_dataset(
    generator: HeadExplainer | AttentionOverlapGenerator,
    images: Any,
    *,
    group_labels: Sequence[Hashable] | np.ndarray | None = None,
    batch_size: int = 32,
    disease_head: str | int = "disease",
    attribute_head: str | int = "attribute",
    disease_target: Any = None,
    attribute_target: Any = None,
    threshold: float = 0.5,
    return_heatmaps: bool = False,
) -> dict[str, Any]:
    """Per-sample overlap of two heads' heatmaps over many images, and its distribution.

    Both heads are explained from one forward pass per batch
    (``generator.explain(batch, [(disease_head, t1), (attribute_head, t2)])``; a generator
    without ``explain`` is asked for ``generate_attention_overlap`` instead).

    Parameters
    ----------
    generator:
        A :class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator` for a multi-head model.
    images:
        ``(N, C, H, W)`` array or tensor.
    group_labels:
        Optional label per sample; the distribution is then also given per group.
    batch_size:
        Images per forward pass.
    disease_head, attribute_head:
        The two heads (names in the generator's ``head_mappings``, dict keys or indices).
    disease_target, attribute_target:
        Class to explain per head: ``None`` (each sample's predicted class), one class, or
        one per sample.
    threshold:
        Heatmaps are thresholded at this value (``>=``) for dice and IoU.
    return_heatmaps:
        Also return both heads' ``(N, H, W)`` heatmaps (memory: two maps per image).

    Returns
    -------
    dict
        ``n_samples``, ``threshold``, ``heads``; ``per_sample``: ``{"dice", "iou",
        "cosine", "mass_overlap"}`` arrays ``(N,)`` (same formulas as
        ``calculate_overlap``; NaN where undefined, e.g. both thresholded maps empty);
        ``summary``: per metric ``{n, n_undefined, mean, std, median, q25, q75, min,
        max}``; ``by_group`` (when labels are given): ``{label: {"n", "dice": {...},
        ...}}``; ``disease_predictions`` / ``attribute_predictions`` ``(N,)`` when the
        generator reports them; ``disease_heatmaps`` / ``attribute_heatmaps`` on request.
    """
    batch_size = check_batch_size(batch_size)
    n_samples = len(images)
    if n_samples == 0:
        raise ValueError("images is empty (0 samples)")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (heatmaps are in [0, 1]), got {threshold}")
    codes = None
    if group_labels is not None:
        groups, codes = group_codes(group_labels, n_samples)
    if not isinstance(generator, (HeadExplainer, AttentionOverlapGenerator)):
        raise TypeError(
            "generator must have explain() or generate_attention_overlap() (a "
            f"GradCAMHeatmapGenerator); got {type(generator).__name__}"
        )

    per_sample: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    predictions: dict[str, list[np.ndarray]] = {"disease": [], "attribute": []}
    kept_maps: dict[str, list[np.ndarray]] = {"disease": [], "attribute": []}
    for start in range(0, n_samples, batch_size):
        stop = min(start + batch_size, n_samples)
        batch = images[start:stop]
        first = slice_target(disease_target, start, stop, n_samples, "disease_target")
        second = slice_target(attribute_target, start, stop, n_samples, "attribute_target")
        if isinstance(generator, HeadExplainer):
            disease, attribute = generator.explain(
                batch, [(disease_head, first), (attribute_head, second)]
            )
            disease_maps, attribute_maps = disease.heatmaps, attribute.heatmaps
            predictions["disease"].append(np.asarray(disease.predictions))
            predictions["attribute"].append(np.asarray(attribute.predictions))
        else:
            result = generator.generate_attention_overlap(
                batch,
                disease_target=first,
                attribute_target=second,
                disease_head=disease_head,
                attribute_head=attribute_head,
                threshold=threshold,
            )
            disease_maps, attribute_maps = result.disease_heatmap, result.attribute_heatmap
        overlap = overlap_per_sample(disease_maps, attribute_maps, threshold)
        overlap["mass_overlap"] = mass_overlap(disease_maps, attribute_maps)
        for name in METRICS:
            per_sample[name].append(overlap[name])
        if return_heatmaps:
            kept_maps["disease"].append(np.asarray(disease_maps))
            kept_maps["attribute"].append(np.asarray(attribute_maps))

    arrays = {name: np.concatenate(parts) for name, parts in per_sample.items()}
    result_dict: dict[str, Any] = {
        "n_samples": n_samples,
        "threshold": float(threshold),
        "heads": (disease_head, attribute_head),
        "per_sample": arrays,
        "summary": {name: summarize_values(values) for name, values in arrays.items()},
    }
    if codes is not None:
        result_dict["by_group"] = _summaries_by_group(arrays, groups, codes)
    if predictions["disease"]:
        result_dict["disease_predictions"] = np.concatenate(predictions["disease"])
        result_dict["attribute_predictions"] = np.concatenate(predictions["attribute"])
    if return_heatmaps:
        result_dict["disease_heatmaps"] = np.concatenate(kept_maps["disease"])
        result_dict["attribute_heatmaps"] = np.concatenate(kept_maps["attribute"])
    return result_dict


def _summaries_by_group(
    arrays: dict[str, np.ndarray], groups: list[Hashable], codes: np.ndarray
) -> dict[Hashable, dict[str, Any]]:
    """``{label: {"n", metric: summary, ...}}`` for the samples of each group."""
    by_group: dict[Hashable, dict[str, Any]] = {}
    for code, label in enumerate(groups):
        members = codes == code
        by_group[label] = {"n": int(members.sum())}
        for name, values in arrays.items():
            by_group[label][name] = summarize_values(values[members])
    return by_group
