"""Targets: what score of the model output a CAM explains (pytorch-grad-cam compatible).

A target is called with one sample's output (e.g. a ``(num_classes,)`` logit vector) and
returns a scalar score tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SoftmaxOutputTarget",
]


class ClassifierOutputTarget:
    """The logit of one class."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim == 1:
            return model_output[self.category]
        return model_output[:, self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of one class."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim == 1:
            return torch.softmax(model_output, dim=-1)[self.category]
        return torch.softmax(model_output, dim=-1)[:, self.category]


class BinaryClassifierOutputTarget:
    """A single-logit binary classifier: the logit for class 1, its negation for class 0."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1 if self.category == 1 else -1
        return model_output * sign


class RawScoresOutputTarget:
    """The model output itself (e.g. a regression score)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output


class SemanticSegmentationTarget:
    """Sum of one category's scores inside a pixel mask of a segmentation output."""

    def __init__(self, category: int, mask: np.ndarray | torch.Tensor) -> None:
        self.category = int(category)
        self.mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(model_output.device)
        return (model_output[self.category, :, :] * mask).sum()


class ClassifierOutputReST:
    """ReST score (ShapleyCAM paper): the logit minus the cross-entropy of the class.

    ``z_c - CE(z, c) = z_c + log softmax(z)_c``; uses both the pre- and post-softmax
    output, so second-order methods (:class:`~shortcut_detect.cam.ShapleyCAM`) see a
    curved score even when the head is linear.
    """

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        log_probabilities = torch.log_softmax(model_output, dim=-1)
        if model_output.ndim == 1:
            return model_output[self.category] + log_probabilities[self.category]
        return model_output[:, self.category] + log_probabilities[:, self.category]


class SoftmaxOutputTarget:
    """The softmax of the whole output (summed by the engine: use it to explain all classes)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=-1)


class FinerWeightedTarget:
    """Main class score minus ``alpha`` times similar classes' scores (Finer-CAM).

    ``sum_j p_j (z_main - alpha z_j) / (sum_j p_j + 1e-9)`` over the comparison classes
    ``j``, weighted by their softmax probabilities ``p_j``.

    Parameters
    ----------
    main_category:
        The class to explain.
    comparison_categories:
        Classes to tell it apart from (usually the most similar ones).
    alpha:
        Strength of the comparison; 0 gives the plain logit of ``main_category``.
    """

    def __init__(
        self, main_category: int, comparison_categories: Sequence[int], alpha: float
    ) -> None:
        self.main_category = int(main_category)
        self.comparison_categories = [int(c) for c in comparison_categories]
        if not self.comparison_categories:
            raise ValueError("FinerWeightedTarget needs at least one comparison category")
        self.alpha = float(alpha)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(model_output, dim=-1)
        main = model_output[..., self.main_category]
        others = model_output[..., self.comparison_categories]
        weights = probabilities[..., self.comparison_categories]
        numerator = (weights * (main.unsqueeze(-1) - self.alpha * others)).sum(dim=-1)
        return numerator / (weights.sum(dim=-1) + 1e-9)

    def __repr__(self) -> str:
        return (
            f"FinerWeightedTarget({self.main_category}, {self.comparison_categories}, "
            f"alpha={self.alpha})"
        )


class FasterRCNNBoxScoreTarget:
    """Detection score: for each reference box, IoU plus class score of the best-matching box.

    Called with one image's torchvision detection output (a dict with ``boxes``, ``labels``
    and ``scores``). A reference box counts only if its best match has IoU above
    ``iou_threshold`` and the same label; the score is the sum over reference boxes.
    """

    def __init__(
        self,
        labels: Sequence[int],
        bounding_boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
        iou_threshold: float = 0.5,
    ) -> None:
        self.labels = [int(label) for label in labels]
        self.bounding_boxes = torch.as_tensor(np.asarray(bounding_boxes, dtype=np.float64))
        if self.bounding_boxes.ndim != 2 or self.bounding_boxes.shape[1] != 4:
            raise ValueError(
                f"bounding_boxes must be (N, 4) as (x1, y1, x2, y2), got shape "
                f"{tuple(self.bounding_boxes.shape)}"
            )
        if len(self.labels) != len(self.bounding_boxes):
            raise ValueError(
                f"{len(self.labels)} labels for {len(self.bounding_boxes)} bounding boxes"
            )
        self.iou_threshold = float(iou_threshold)

    def __call__(self, model_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        boxes = model_outputs["boxes"]
        output = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        if len(boxes) == 0:
            return output
        references = self.bounding_boxes.to(boxes.device, boxes.dtype)
        ious = box_iou(references, boxes)
        best_iou, best = ious.max(dim=1)
        for label, iou, index in zip(self.labels, best_iou, best):
            if iou > self.iou_threshold and int(model_outputs["labels"][index]) == label:
                output = output + iou + model_outputs["scores"][index]
        return output
