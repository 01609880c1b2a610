"""Targets: what score of the model output a CAM explains (pytorch-grad-cam compatible).

A target is called with one sample's output (e.g. a ``(num_classes,)`` logit vector) and
returns a scalar score tensor.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
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
