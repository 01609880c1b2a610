"""Raw filter responses of one layer, without gradient weighting: the strongest channels
as a grid, and their mean, to show next to a Grad-CAM map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import prepare_inputs, upsample
from shortcut_detect.cam.layers import LayerSpec, default_layer, resolve_layer
from shortcut_detect.common.device import resolve_device
from shortcut_detect.common.validation import positive_int
from shortcut_detect.gradcam import get_activation_maps

__all__ = ["ActivationGrid", "activation_grid"]


@dataclass
class ActivationGrid:
    """The strongest channels of a layer for one image.

    Attributes
    ----------
    layer:
        Dotted name of the layer.
    channels:
        ``(k,)`` channel indices, strongest (highest mean activation) first.
    channel_means:
        ``(k,)`` their mean activation over the layer's positions.
    maps:
        ``(k, H, W)`` float32 raw activations of those channels, resized (bilinear) to the
        input size; not normalised (units of the layer).
    mean_map:
        ``(H, W)`` float32 mean of :attr:`maps`.
    layer_shape:
        ``(C, h, w)`` shape of the layer's output for this image.
    """

    layer: str
    channels: np.ndarray
    channel_means: np.ndarray
    maps: np.ndarray
    mean_map: np.ndarray
    layer_shape: tuple[int, ...]

    def normalized(self) -> np.ndarray:
        """:attr:`maps` each divided by the largest value of all shown channels (one shared
        scale, so weak channels look weak), clipped to [0, 1]."""
        peak = float(self.maps.max()) if self.maps.size else 0.0
        if peak <= 0:
            return np.zeros_like(self.maps)
        return np.clip(self.maps / peak, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON summary (without the maps)."""
        return {
            "layer": self.layer,
            "layer_shape": list(self.layer_shape),
            "channels": self.channels.tolist(),
            "channel_means": [float(value) for value in self.channel_means],
        }


def activation_grid(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    layer: LayerSpec | None = None,
    top_k: int = 16,
    *,
    device: str | torch.device | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ActivationGrid:
    """The ``top_k`` channels of ``layer`` with the highest mean activation on ``image``.

    Parameters
    ----------
    model:
        The model (run in eval mode; its modes are restored after).
    image:
        One ``(C, H, W)`` or ``(1, C, H, W)`` input, preprocessed as the model expects.
    layer:
        Module or dotted path; ``None`` takes the last layer with a spatial output (as
        Grad-CAM does).
    top_k:
        Channels kept (fewer when the layer has fewer).
    device:
        ``None`` uses the model's device.
    reshape_transform:
        For transformer layers, turns tokens into ``(B, C, h, w)`` (see
        :mod:`shortcut_detect.cam.reshape`).
    """
    top_k = positive_int("top_k", top_k)
    device = resolve_device(device, model)
    batch = prepare_inputs(image, device, spatial_dims=2)
    if batch.shape[0] != 1:
        raise ValueError(f"activation_grid takes one image, got a batch of {batch.shape[0]}")
    if layer is None:
        layer = default_layer(model, batch).name
    name, module = resolve_layer(model, layer)
    activations = get_activation_maps(model, device, batch, module, reshape_transform)
    if activations.ndim != 3:
        raise ValueError(
            f"layer {name!r} gives activations of shape {activations.shape} per image; "
            "activation maps need a (channels, height, width) output (pass reshape_transform "
            "for transformer layers)"
        )
    means = activations.reshape(activations.shape[0], -1).mean(axis=1)
    count = min(int(top_k), len(means))
    order = np.argsort(-means, kind="stable")[:count]
    chosen = torch.from_numpy(np.ascontiguousarray(activations[order]))
    maps = upsample(chosen, tuple(batch.shape[2:])).numpy().astype(np.float32)
    return ActivationGrid(
        layer=name,
        channels=order.astype(np.int64),
        channel_means=means[order].astype(np.float32),
        maps=maps,
        mean_map=maps.mean(axis=0).astype(np.float32),
        layer_shape=tuple(int(s) for s in activations.shape),
    )
