"""FullGrad (Srinivas & Fleuret 2019): input-gradient plus bias-gradients of every layer.

One forward pass recorded from the input and one ``torch.autograd.grad`` call give the
gradient w.r.t. the input and w.r.t. the output of every convolution and BatchNorm that
has a bias; no parameter gradient is computed and nothing is left in ``.grad``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.base import BaseCAM, eigen_projection
from shortcut_detect.cam.engine import ReshapeTransform, upsample
from shortcut_detect.cam.layers import LayerSpec

__all__ = ["FullGrad", "bias_layers", "effective_bias"]

_BIAS_LAYER_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Conv3d, nn.BatchNorm3d)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The convolutions and BatchNorms with a bias, in module order.

    Types are matched exactly (as pytorch-grad-cam does): a subclass such as timm's
    ``BatchNormAct2d`` also applies an activation, so its output is not ``BN(x)``.
    """
    return [
        module
        for module in model.modules()
        if type(module) in _BIAS_LAYER_TYPES and getattr(module, "bias", None) is not None
    ]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The bias a layer adds in eval mode (BatchNorm: ``beta - mean * gamma / sqrt(var + eps)``)."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (layer.bias - layer.running_mean * scale).detach()
    return layer.bias.detach()


def _channel_normalize(tensor: torch.Tensor) -> torch.Tensor:
    """Min-max per sample and channel with pytorch-grad-cam's epsilon (1e-7)."""
    flat = tensor.flatten(2)
    flat = flat - flat.min(dim=2, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=2, keepdim=True).values)
    return flat.reshape(tensor.shape)


class FullGrad(BaseCAM):
    """FullGrad saliency: ``|x * dS/dx|`` plus ``|b * dS/dz|`` of every biased layer ``z``.

    Each term is min-max scaled per channel, resized to the input and summed over channels
    and layers; the total is min-max scaled. ``target_layers`` is ignored (all biased
    convolutions and BatchNorms are used; a warning says so when layers are given), as in
    pytorch-grad-cam. With ``eigen_smooth=True`` the terms (input channels and one per
    layer) are projected on their first principal component at 1/8 resolution, as
    pytorch-grad-cam does (sign convention of :func:`eigen_projection`).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        **kwargs: Any,
    ) -> None:
        if target_layers:
            warnings.warn(
                "FullGrad ignores target_layers: it uses every convolution and BatchNorm "
                "with a bias.",
                UserWarning,
                stacklevel=2,
            )
        layers = bias_layers(model)
        if not layers:
            raise ValueError(
                "FullGrad needs convolutions or BatchNorm layers with a bias; the model has none."
            )
        super().__init__(model, layers, reshape_transform, **kwargs)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        inputs, capture = self.capture_for(input_tensor, targets, input_gradient=True)
        size = capture.input_size
        terms = [_channel_normalize((capture.input_gradients[0] * inputs).abs().detach())]
        for layer, grads in zip(self.target_layers, capture.gradients[0]):
            bias = effective_bias(layer).to(grads)
            contribution = _channel_normalize((grads * _expand(bias, grads)).abs())
            # Resizing is linear: sum the channels first, resize once.
            terms.append(upsample(contribution.sum(dim=1), size).unsqueeze(1))
        stacked = torch.cat(terms, dim=1)  # (B, input channels + layers, *size)
        if eigen_smooth:
            small = tuple(max(1, s // 8) for s in size)
            projection = eigen_projection(_resize_channels(stacked, small))
            total = upsample(_channel_normalize(projection.unsqueeze(1))[:, 0], size)
        else:
            total = stacked.sum(dim=1)
        flat = total.flatten(1)
        flat = flat - flat.min(dim=1, keepdim=True).values
        flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
        return flat.reshape(total.shape).float().cpu().numpy()


def _expand(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bias.reshape(1, -1, *([1] * (like.ndim - 2)))


def _resize_channels(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Normalise each channel, then resize it (pytorch-grad-cam's order)."""
    batch, channels = tensor.shape[:2]
    normalised = _channel_normalize(tensor).reshape(batch * channels, *tensor.shape[2:])
    resized = upsample(normalised, size)
    return resized.reshape(batch, channels, *resized.shape[1:])
