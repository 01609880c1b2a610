"""Gradient CAM methods and EigenCAM: each one only says how channels or positions are weighted.

Formulas follow pytorch-grad-cam 1.5 (same epsilons), so the normalised maps agree with it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from shortcut_detect.cam.base import BaseCAM, eigen_projection, require_gradients

__all__ = [
    "EigenCAM",
    "EigenGradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
]


def _spatial_sum(tensor: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    return tensor.sum(dim=tuple(range(2, tensor.ndim)), keepdim=keepdim)


def _reduce(elementwise: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
    return eigen_projection(elementwise) if eigen_smooth else elementwise.sum(dim=1)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): sum over channels of gradient times activation.

    Unlike Grad-CAM it keeps the gradient's spatial detail, so the map provably shows the
    positions that raise the score (for a model with a linear head after the layer).
    """

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        if eigen_smooth:
            warnings.warn(
                "HiResCAM's faithfulness guarantees do not hold if smoothing is applied",
                UserWarning,
                stacklevel=3,
            )
        return _reduce(require_gradients(self, gradients) * activations, eigen_smooth)


class GradCAMElementWise(BaseCAM):
    """Element-wise Grad-CAM: ReLU of gradient times activation, summed over channels."""

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        elementwise = torch.relu(require_gradients(self, gradients) * activations)
        return _reduce(elementwise, eigen_smooth)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): weights from equation 19 of the paper.

    With exponential-free scores the higher-order derivatives are powers of the gradient:
    ``alpha = g^2 / (2 g^2 + sum(A) g^3)``, ``w_k = sum(alpha * relu(g))``.
    """

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        grads = require_gradients(self, gradients)
        grads_2 = grads.pow(2)
        grads_3 = grads_2 * grads
        sum_activations = _spatial_sum(activations, keepdim=True)
        alpha = grads_2 / (2 * grads_2 + sum_activations * grads_3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return _spatial_sum(torch.relu(grads) * alpha)


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activation."""

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        grads = require_gradients(self, gradients)
        sum_activations = _spatial_sum(activations, keepdim=True)
        return _spatial_sum(grads * activations / (sum_activations + 1e-7))


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): positive gradients times activations, per position."""

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        elementwise = torch.relu(require_gradients(self, gradients)) * activations
        return _reduce(elementwise, eigen_smooth)


class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations.

    Needs no gradients and no target (the map is class-agnostic); runs under
    ``torch.inference_mode``. The sign convention is documented in
    :func:`~shortcut_detect.cam.base.eigen_projection`.
    """

    uses_gradients = False

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        return eigen_projection(activations)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM: first principal component of gradient times activation (class-specific)."""

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        return eigen_projection(require_gradients(self, gradients) * activations)
