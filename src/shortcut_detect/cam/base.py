"""BaseCAM: the pytorch-grad-cam style front of the engine. A CAM method only weights channels.

A subclass sets ``uses_gradients`` and overrides :meth:`BaseCAM.channel_weights` (``(B, C)``
weights per channel) or, for element-wise methods, :meth:`BaseCAM.cam_image`.
Everything else (hooks, forward, targets, backward, ReLU, resizing, normalisation, several
layers, smoothing) happens once, here and in :mod:`shortcut_detect.cam.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import (
    CAMEngine,
    Capture,
    ReshapeTransform,
    ScoreFn,
    TargetScores,
    minmax_normalize,
    prepare_inputs,
    upsample,
)
from shortcut_detect.cam.layers import LayerSpec
from shortcut_detect.cam.targets import ClassifierOutputTarget

__all__ = ["BaseCAM", "GradCAM", "eigen_projection", "spatial_mean"]


def spatial_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis of ``(B, C, *spatial)``: ``(B, C)``."""
    return tensor.flatten(2).mean(dim=2)


def eigen_projection(weighted: torch.Tensor) -> torch.Tensor:
    """Projection of ``(B, C, *spatial)`` on its first principal component: ``(B, *spatial)``.

    Per sample, the channel vectors at each position are centred and the map is their
    projection on the first right-singular vector (pytorch-grad-cam's ``eigen_smooth``).
    The sign is chosen so that the map is positively correlated with the channel sum
    (our documented convention; the SVD sign itself is arbitrary).
    """
    batch, channels = weighted.shape[:2]
    spatial = weighted.shape[2:]
    maps = []
    for sample in weighted.detach().to(torch.float64):
        points = sample.reshape(channels, -1).T  # (positions, channels)
        points = torch.nan_to_num(points)
        centred = points - points.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        projection = points @ vh[0]
        reference = points.sum(dim=1)
        if torch.dot(projection - projection.mean(), reference - reference.mean()) < 0:
            projection = -projection
        maps.append(projection.reshape(spatial))
    return torch.stack(maps).to(weighted.dtype).reshape(batch, *spatial)


class BaseCAM:
    """Class activation maps for a model and one or more target layers.

    Call signature, return shapes and dtypes follow pytorch-grad-cam 1.5.

    Parameters
    ----------
    model:
        The model to explain.
    target_layers:
        Layers (modules or dotted paths) whose activations are weighted. With several
        layers, each layer's map is normalised, resized, and the maps are averaged.
    reshape_transform:
        Turns a non-spatial layer output into ``(B, C, *spatial)`` (ViT, Swin).
    device:
        ``None`` uses the model's device.
    """

    uses_gradients: bool = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        compute_input_gradient: bool = False,
        uses_gradients: bool | None = None,
        tta_transforms: Any = None,
        detach: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.engine = CAMEngine(model, target_layers, reshape_transform, device)
        self.device = self.engine.device
        self.target_layers = self.engine.target_layers
        self.reshape_transform = reshape_transform
        if uses_gradients is not None:
            self.uses_gradients = uses_gradients
        self.outputs: Any = None

    # -- what a method defines -----------------------------------------------------------
    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        """``(B, C)`` channel weights; the base map is ``sum_k w_k A_k``."""
        raise NotImplementedError

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        """Map at layer resolution, ``(B, *spatial)``, before ReLU."""
        weights = self.channel_weights(activations, gradients, **context)
        weighted = weights.reshape(*weights.shape, *([1] * (activations.ndim - 2))) * activations
        if eigen_smooth:
            return eigen_projection(weighted)
        return weighted.sum(dim=1)

    # -- the shared pipeline -------------------------------------------------------------
    def layer_maps(
        self,
        capture: Capture,
        score_index: int = 0,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> list[torch.Tensor]:
        """Raw (unnormalised, after ReLU) maps at each layer's resolution."""
        maps = []
        for layer_index, activations in enumerate(capture.activations):
            gradients = capture.gradients[score_index][layer_index] if capture.gradients else None
            cam = self.cam_image(
                activations,
                gradients,
                eigen_smooth=eigen_smooth,
                layer_index=layer_index,
                score_index=score_index,
                capture=capture,
                **context,
            )
            maps.append(torch.relu(cam.float()))
        return maps

    @staticmethod
    def combine(layer_maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Resize each layer's map to ``size``, normalise, average, normalise again."""
        resized = [minmax_normalize(upsample(cam, size)) for cam in layer_maps]
        if len(resized) == 1:
            return resized[0]
        return minmax_normalize(torch.stack(resized).mean(dim=0))

    @staticmethod
    def _score_resolver(targets: Sequence[Any] | None) -> Callable[[Any], list[ScoreFn]]:
        def from_outputs(outputs: Any) -> list[ScoreFn]:
            if not isinstance(outputs, torch.Tensor):
                raise TypeError(
                    f"The model returns {type(outputs).__name__}; pytorch-grad-cam style "
                    "classes expect a tensor. Wrap the model, or use "
                    "GradCAMHeatmapGenerator with head_mappings for multi-head outputs."
                )
            if targets is None:
                chosen = [ClassifierOutputTarget(c) for c in outputs.argmax(dim=-1).tolist()]
            else:
                chosen = list(targets)
                if len(chosen) == 1:
                    chosen = chosen * outputs.shape[0]
            return [TargetScores(chosen)]

        return from_outputs

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """One pass: ``(B, H, W)`` float32 maps in [0, 1] at input resolution."""
        inputs = prepare_inputs(input_tensor, self.device)
        capture = self.engine.capture(
            inputs,
            score_from_outputs=self._score_resolver(targets),
            need_gradients=self.uses_gradients,
        )
        self.outputs = capture.outputs
        maps = self.layer_maps(capture, 0, eigen_smooth, inputs=inputs)
        return self.combine(maps, capture.input_size).cpu().numpy().astype(np.float32)

    def forward_augmentation_smoothing(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Average of the maps over horizontal flips and brightness scales (0.9, 1, 1.1)."""
        inputs = prepare_inputs(input_tensor, self.device)
        maps = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                augmented = inputs * factor
                if flip:
                    augmented = augmented.flip(-1)
                cam = self.forward(augmented, targets, eigen_smooth)
                maps.append(cam[..., ::-1] if flip else cam)
        return np.mean(np.stack(maps), axis=0).astype(np.float32)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        return self.forward(input_tensor, targets, eigen_smooth)

    # -- resources -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook (idempotent; hooks never outlive a call anyway)."""
        self.engine.close()

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type: object, exc_value: object, traceback: object) -> bool:
        self.close()
        return False

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient."""

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        return spatial_mean(gradients)
