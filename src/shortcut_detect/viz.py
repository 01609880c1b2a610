"""Overlays and figures. Overlays need only numpy; figures use matplotlib (headless)."""

from __future__ import annotations

import numpy as np
import torch

from shortcut_detect.cam.image import apply_colormap

__all__ = ["overlay_heatmap", "to_display_image"]


def to_display_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Any image (``(C, H, W)``, ``(1, C, H, W)``, ``(H, W, C)``, ``(H, W)``; normalised or not)
    as float32 RGB ``(H, W, 3)`` in [0, 1] for display.

    Values already in [0, 1] are kept; anything else (e.g. ImageNet-normalised tensors) is
    min-max scaled. One channel is repeated to three.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"Expected one image, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(1, 2, 0) if array.shape[0] < array.shape[-1] else array
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"Cannot display an image of shape {np.shape(image)}")
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8 or array.max() > 1.0 + 1e-6 or array.min() < -1e-6:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def overlay_heatmap(
    image: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend a ``(H, W)`` heatmap on an image: uint8 ``(H, W, 3)``.

    ``alpha`` is the heatmap's opacity (0 shows only the image, 1 only the heatmap).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_display_image(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.shape != rgb.shape[:2]:
        raise ValueError(
            f"Heatmap shape {heat.shape} does not match the image's {rgb.shape[:2]}; "
            "generate the heatmap from this image"
        )
    blended = (1.0 - alpha) * rgb + alpha * apply_colormap(heat, colormap)
    return np.uint8(np.clip(blended, 0.0, 1.0) * 255 + 0.5)
