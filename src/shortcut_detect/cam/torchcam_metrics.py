"""torchcam's metric classes (``torchcam.metrics``) in their call form, for our CAM objects.

``metric = ClassificationMetric(cam, partial(torch.softmax, dim=-1))``, then
``metric.update(input_tensor)`` per batch and ``metric.summary()``. ``cam`` is any CAM of
this package (``cam(input_tensor, targets) -> (B, *spatial)`` maps at input resolution,
with a ``model`` attribute); the model runs in eval mode, every module's mode restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.targets import ClassifierOutputTarget
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.common.validation import positive_int

__all__ = ["ClassificationMetric", "DeletionInsertionMetric"]


class _CAMLike(Protocol):
    model: nn.Module

    def __call__(self, input_tensor: torch.Tensor, targets: Sequence[Any] | None) -> np.ndarray: ...


def _class_indices(scores: torch.Tensor, class_idx: int | Sequence[int] | None) -> torch.Tensor:
    batch, classes = scores.shape
    if class_idx is None:
        return scores.argmax(dim=-1)
    indices = torch.as_tensor(np.asarray(class_idx), dtype=torch.long).reshape(-1)
    if indices.numel() == 1:
        indices = indices.expand(batch).clone()
    if indices.numel() != batch:
        raise ValueError(f"{indices.numel()} class indices for a batch of {batch}")
    if bool(((indices < 0) | (indices >= classes)).any()):
        raise ValueError(f"class_idx must be in 0..{classes - 1}, got {indices.tolist()}")
    return indices.to(scores.device)


class _CAMMetric:
    def __init__(
        self, cam_extractor: _CAMLike, logits_fn: Callable[[Any], Any] | None = None
    ) -> None:
        if not isinstance(getattr(cam_extractor, "model", None), nn.Module):
            raise TypeError("cam_extractor must be a CAM object with a .model (e.g. GradCAM)")
        self.cam_extractor = cam_extractor
        self.logits_fn = logits_fn
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.total = 0
        self._sums: dict[str, float] = {}

    def _scores(self, inputs: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.cam_extractor.model), torch.inference_mode():
            logits = self.cam_extractor.model(inputs)
        return logits if self.logits_fn is None else self.logits_fn(logits)

    def _maps(
        self, inputs: torch.Tensor, class_idx: int | Sequence[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self._scores(inputs)
        indices = _class_indices(scores, class_idx)
        targets = [ClassifierOutputTarget(int(c)) for c in indices.tolist()]
        maps = torch.as_tensor(np.asarray(self.cam_extractor(inputs, targets)))
        if tuple(maps.shape) != (inputs.shape[0], *inputs.shape[2:]):
            raise ValueError(
                f"the CAM returned maps of shape {tuple(maps.shape)}, expected "
                f"{(inputs.shape[0], *inputs.shape[2:])}"
            )
        original = scores.gather(1, indices[:, None])[:, 0]
        return maps.to(inputs), indices, original

    def _add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.sum())

    def _mean(self, name: str) -> float:
        if self.total == 0:
            raise ValueError("call update() before summary()")
        return self._sums[name] / self.total


class ClassificationMetric(_CAMMetric):
    """Average Drop and Increase in Confidence, torchcam's definition and call form.

    Per image, ``drop = relu(Y - O) / (Y + 1e-7)`` and ``increase = O > Y`` with ``Y`` the
    class score of the image and ``O`` of the image times its map; ``summary()`` gives
    their means as fractions (``avg_drop``, ``conf_increase``), not percentages.
    """

    def update(self, input_tensor: torch.Tensor, class_idx: int | Sequence[int] | None = None):
        """Add a batch; ``class_idx`` ``None`` explains each image's top class."""
        maps, indices, original = self._maps(input_tensor, class_idx)
        masked = self._scores(maps.unsqueeze(1) * input_tensor).gather(1, indices[:, None])[:, 0]
        self._add(
            avg_drop=torch.relu(original - masked) / (original + 1e-7),
            conf_increase=(original < masked).float(),
        )
        self.total += input_tensor.shape[0]

    def summary(self) -> dict[str, float]:
        """``{"avg_drop": ..., "conf_increase": ...}`` over every update."""
        return {"avg_drop": self._mean("avg_drop"), "conf_increase": self._mean("conf_increase")}


class DeletionInsertionMetric(_CAMMetric):
    """Deletion and insertion areas (RISE), torchcam's definition and call form.

    Positions are ranked by map value (highest first, ties by position). Deletion replaces
    the first ``k`` positions by the baseline, insertion starts from the baseline and
    restores them; ``k`` runs over ``0, s, 2s, ..., all`` with ``s = ceil(positions /
    steps)``. The areas under the class-score curves against the fraction ``k / positions``
    (trapezoid rule) are averaged by ``summary()``: deletion lower is better, insertion
    higher.

    Parameters
    ----------
    steps:
        Maximum number of intervals of each curve.
    baseline:
        A tensor broadcastable to the input, a callable of the input, or ``None`` (zeros).
    batch_size:
        Perturbed images per forward pass.
    """

    def __init__(
        self,
        cam_extractor: _CAMLike,
        logits_fn: Callable[[Any], Any] | None = None,
        *,
        steps: int = 20,
        baseline: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 32,
    ) -> None:
        steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
        super().__init__(cam_extractor, logits_fn)
        self.steps = steps
        self.baseline = baseline
        self.batch_size = batch_size

    def _baseline(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.baseline is None:
            return torch.zeros_like(inputs)
        value = self.baseline(inputs) if callable(self.baseline) else self.baseline
        return torch.broadcast_to(torch.as_tensor(value).to(inputs), inputs.shape)

    def update(self, input_tensor: torch.Tensor, class_idx: int | Sequence[int] | None = None):
        """Add a batch; ``class_idx`` ``None`` explains each image's top class."""
        maps, indices, original = self._maps(input_tensor, class_idx)
        baseline = self._baseline(input_tensor)
        flat_maps = maps.flatten(1)
        positions = flat_maps.shape[1]
        step = -(-positions // self.steps)
        counts = torch.tensor([*range(0, positions, step), positions])
        fractions = counts.float() / positions
        order = torch.argsort(flat_maps, dim=1, descending=True, stable=True)
        ranks = torch.argsort(order, dim=1)
        deletion, insertion = [], []
        for sample in range(input_tensor.shape[0]):
            first = ranks[sample][None] < counts[:, None].to(ranks)  # (points, positions)
            image = input_tensor[sample].flatten(1)
            empty = baseline[sample].flatten(1)
            deleted = torch.where(first[:, None], empty, image)
            inserted = torch.where(first[:, None], image, empty)
            batch = torch.cat([deleted, inserted]).reshape(-1, *input_tensor.shape[1:])
            scores = torch.cat(
                [self._scores(chunk)[:, indices[sample]] for chunk in batch.split(self.batch_size)]
            )
            deletion.append(scores[: len(counts)])
            insertion.append(scores[len(counts) :])
        self._add(
            deletion_auc=torch.trapezoid(torch.stack(deletion), fractions.to(original), dim=1),
            insertion_auc=torch.trapezoid(torch.stack(insertion), fractions.to(original), dim=1),
        )
        self.total += input_tensor.shape[0]

    def summary(self) -> dict[str, float]:
        """``{"deletion_auc": ..., "insertion_auc": ...}``: mean areas over every update."""
        return {name: self._mean(name) for name in ("deletion_auc", "insertion_auc")}
