"""Result types and generator protocols shared by the CAM front, the analysis and the figures.

They live in a module of their own (numpy and torch only) so that
:mod:`shortcut_detect.gradcam`, :mod:`shortcut_detect.analysis`, :mod:`shortcut_detect.viz`,
the detectors and the audit can all import them without importing each other.

The protocols describe "something that makes heatmaps" by the methods a caller uses; a
:class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator` satisfies all three. They are
``runtime_checkable``, so ``isinstance(obj, HeatmapGenerator)`` checks that the methods exist
(not their signatures).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "AttentionOverlapGenerator",
    "AttentionOverlapResult",
    "Explanation",
    "HeadExplainer",
    "HeatmapGenerator",
]


@dataclass
class AttentionOverlapResult:
    """Overlap of two attention patterns: two heads of one model, or groups of samples.

    Attributes
    ----------
    overlap_score:
        Similarity in [0, 1] (dice of the thresholded maps for two heads; for groups,
        see :func:`shortcut_detect.analysis.groups.compare_groups`).
    metrics:
        ``{"dice", "iou", "cosine", ...}``.
    disease_heatmap, attribute_heatmap:
        ``(B, H, W)`` maps of the two heads, when the result came from two heads.
    group_heatmaps:
        Mean map per group label, when the result came from a group comparison.
    divergence_regions:
        ``(H, W)`` map of where the groups' attention differs.
    summary:
        A paragraph a person can read.
    """

    overlap_score: float
    metrics: dict[str, Any] = field(default_factory=dict)
    disease_heatmap: np.ndarray | None = None
    attribute_heatmap: np.ndarray | None = None
    group_heatmaps: dict[Hashable, np.ndarray] = field(default_factory=dict)
    divergence_regions: np.ndarray | None = None
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    """Heatmaps for one (head, target) request, with what the model predicted.

    Attributes
    ----------
    heatmaps:
        ``(B, *input_size)`` float32 in [0, 1].
    raw_heatmaps:
        ``(B, *layer_spatial)`` float32 at layer resolution, after ReLU, not normalised.
    target_indices:
        ``(B,)`` class explained per sample. A single-logit head (output ``(B,)`` or
        ``(B, 1)``) has classes 0 and 1: 1 explains the logit, 0 its negation.
    predictions, confidences:
        ``(B,)`` predicted class and its probability (softmax; sigmoid for one logit).
    head_output:
        ``(B, K)`` detached logits of the head (``(B,)`` for one logit).
    """

    heatmaps: np.ndarray
    raw_heatmaps: np.ndarray
    target_indices: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    head_output: torch.Tensor
    head: str | int = "logits"


@runtime_checkable
class HeatmapGenerator(Protocol):
    """Something that makes heatmaps: ``generate_heatmap(inputs, head, target_index)``.

    Returns ``(B, H, W)`` maps in [0, 1] for a batch of images ``(B, C, H, W)``; ``head``
    picks a prediction head and ``target_index`` the class(es) explained (``None``: the
    predicted class, an int for every sample, or one per sample).
    """

    def generate_heatmap(
        self, inputs: Any, head: str | int = "logits", target_index: Any = None
    ) -> np.ndarray: ...


@runtime_checkable
class HeadExplainer(Protocol):
    """Something that explains several ``(head, target)`` requests from one forward pass."""

    def explain(
        self, inputs: Any, requests: Sequence[tuple[str | int, Any]] = ...
    ) -> list[Explanation]: ...


@runtime_checkable
class AttentionOverlapGenerator(Protocol):
    """Something with the seed API's two-head ``generate_attention_overlap``."""

    def generate_attention_overlap(
        self,
        inputs: Any,
        disease_target: Any = None,
        attribute_target: Any = None,
        disease_head: str | int = "disease",
        attribute_head: str | int = "attribute",
        threshold: float = 0.5,
    ) -> AttentionOverlapResult: ...
