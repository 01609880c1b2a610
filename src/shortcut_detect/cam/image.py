"""Image helpers with pytorch-grad-cam's signatures, without OpenCV."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["apply_colormap", "deprocess_image", "preprocess_image", "show_cam_on_image"]

COLORMAP_JET = 2  # cv2.COLORMAP_JET's value, accepted for compatibility


def _jet(values: np.ndarray) -> np.ndarray:
    four = 4.0 * values[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue
    return np.clip(1.5 - np.abs(four - centres), 0.0, 1.0)


def apply_colormap(mask: np.ndarray, colormap: str | int = "jet") -> np.ndarray:
    """Colour a ``(H, W)`` map in [0, 1]: float32 RGB ``(H, W, 3)`` in [0, 1]."""
    values = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if colormap in ("jet", COLORMAP_JET):
        return _jet(values).astype(np.float32)
    try:
        from matplotlib import colormaps
    except ImportError as error:  # pragma: no cover - matplotlib is in the analysis extra
        raise ValueError(
            f"Colormap {colormap!r} needs matplotlib (pip install 'shortcut-detect[analysis]'); "
            "'jet' works without it."
        ) from error
    if colormap not in colormaps:
        raise ValueError(f"Unknown colormap {colormap!r}; use 'jet' or a matplotlib colormap name")
    return colormaps[colormap](values)[..., :3].astype(np.float32)


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: str | int = COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend a heatmap on a float RGB image in [0, 1]; returns uint8 ``(H, W, 3)``."""
    if np.max(img) > 1:
        raise ValueError("The input image should be np.float32 in the range [0, 1]")
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight should be in the range [0, 1], got {image_weight}")
    heatmap = apply_colormap(mask, colormap)
    if not use_rgb:
        heatmap = heatmap[..., ::-1]
    cam = (1 - image_weight) * heatmap + image_weight * np.asarray(img, dtype=np.float32)
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> torch.Tensor:
    """Float ``(H, W, C)`` image in [0, 1] -> normalised ``(1, C, H, W)`` tensor."""
    array = (np.asarray(img, dtype=np.float32) - np.asarray(mean, dtype=np.float32)) / np.asarray(
        std, dtype=np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Standardise an array for display (as in the Guided Grad-CAM paper): uint8."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1 + 0.5
    img = np.clip(img, 0, 1)
    return np.uint8(img * 255)
