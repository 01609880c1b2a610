"""Image helpers with pytorch-grad-cam's signatures and outputs, without OpenCV."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "COLORMAP_JET",
    "apply_colormap",
    "deprocess_image",
    "jet_lut",
    "preprocess_image",
    "show_cam_on_image",
]

COLORMAP_JET = 2  # cv2.COLORMAP_JET's value, accepted for compatibility

# OpenCV colormap codes with a matplotlib namesake (same idea, colours may differ slightly).
_CV2_NAMES = {
    0: "autumn",
    1: "bone",
    2: "jet",
    3: "winter",
    4: "rainbow",
    5: "ocean",
    6: "summer",
    7: "spring",
    8: "cool",
    10: "pink",
    11: "hot",
    13: "magma",
    14: "inferno",
    15: "plasma",
    16: "viridis",
    17: "cividis",
    18: "twilight",
    19: "twilight_shifted",
    20: "turbo",
}


def jet_lut() -> np.ndarray:
    """OpenCV's ``COLORMAP_JET`` table as uint8 RGB, ``(256, 3)``.

    Each channel is a clipped tent with slope 4 per level; OpenCV's own table rounds one
    entry (level 159, blue) down, which is reproduced so the colours match it exactly.
    """
    level = np.arange(256)
    red = np.minimum(4 * level - 382, 1148 - 4 * level)
    green = np.minimum(4 * level - 128, 892 - 4 * level)
    blue = np.minimum(4 * level + 128, 638 - 4 * level)
    table = np.clip(np.stack([red, green, blue], axis=1), 0, 255).astype(np.uint8)
    table[159, 2] = 1
    return table


_JET = jet_lut()


def _colormap_name(colormap: str | int) -> str:
    if isinstance(colormap, str):
        return colormap.lower() if colormap.lower() == "jet" else colormap
    if isinstance(colormap, (int, np.integer)) and int(colormap) in _CV2_NAMES:
        return _CV2_NAMES[int(colormap)]
    raise ValueError(
        f"Unknown colormap {colormap!r}; use 'jet', a matplotlib colormap name, or an OpenCV "
        f"code ({', '.join(f'{k}={v}' for k, v in _CV2_NAMES.items())})"
    )


def _levels(mask: np.ndarray) -> np.ndarray:
    """``np.uint8(255 * mask)`` as pytorch-grad-cam computes it (truncation), clipped first."""
    values = np.asarray(mask)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float32)
    return np.uint8(255 * np.clip(values, 0.0, 1.0))


def apply_colormap(mask: np.ndarray, colormap: str | int = "jet") -> np.ndarray:
    """Colour a map in [0, 1]: float32 RGB ``(*mask.shape, 3)`` in [0, 1].

    ``"jet"`` (or ``cv2.COLORMAP_JET``) uses OpenCV's table on 256 levels, so colours match
    ``cv2.applyColorMap``; other names need matplotlib.
    """
    name = _colormap_name(colormap)
    levels = _levels(mask)
    if name == "jet":
        return _JET[levels].astype(np.float32) / 255
    try:
        from matplotlib import colormaps
    except ImportError as error:  # pragma: no cover - matplotlib is in the analysis extra
        raise ValueError(
            f"Colormap {colormap!r} needs matplotlib (pip install 'shortcut-detect[analysis]'); "
            "'jet' works without it."
        ) from error
    if name not in colormaps:
        raise ValueError(f"Unknown colormap {colormap!r}; use 'jet' or a matplotlib colormap name")
    return colormaps[name](levels)[..., :3].astype(np.float32)


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: str | int = COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Overlay a CAM on an image, as pytorch-grad-cam does: uint8 ``(H, W, 3)``.

    Parameters
    ----------
    img:
        Float image in [0, 1], ``(H, W, 3)``, RGB or BGR.
    mask:
        ``(H, W)`` map in [0, 1].
    use_rgb:
        ``True`` for an RGB image; ``False`` (the default, OpenCV's convention) colours the
        heatmap in BGR order.
    colormap:
        ``cv2.COLORMAP_JET`` (2, the default) or another name/code (see :func:`apply_colormap`).
    image_weight:
        The result is ``image_weight * img + (1 - image_weight) * heatmap``, rescaled so its
        maximum is 255.
    """
    img = np.asarray(img)
    if np.max(img) > 1:
        raise ValueError(
            "The input image should be np.float32 in the range [0, 1]; divide a uint8 image by 255."
        )
    if image_weight < 0 or image_weight > 1:
        raise ValueError(f"image_weight should be in the range [0, 1], got {image_weight}")
    mask = np.asarray(mask)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {img.shape[:2]}")
    heatmap = apply_colormap(mask, colormap)
    if not use_rgb:
        heatmap = heatmap[..., ::-1]
    cam = (1 - image_weight) * heatmap + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """``(H, W, C)`` image -> normalised ``(1, C, H, W)`` tensor (pytorch-grad-cam's defaults).

    A uint8 image is scaled to [0, 1] first; a float image keeps its dtype, as with
    torchvision's ``ToTensor`` + ``Normalize``. Pass ImageNet statistics
    (``mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]``) for ImageNet models.
    """
    array = np.asarray(img)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"preprocess_image expects an (H, W, C) image, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if tensor.dtype == torch.uint8:
        tensor = tensor.to(torch.get_default_dtype()).div(255)
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).reshape(-1, 1, 1)
    if mean_t.shape[0] not in (1, tensor.shape[0]) or std_t.shape[0] not in (1, tensor.shape[0]):
        raise ValueError(
            f"mean/std have {mean_t.shape[0]}/{std_t.shape[0]} values for a "
            f"{tensor.shape[0]}-channel image"
        )
    return ((tensor - mean_t) / std_t).unsqueeze(0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Standardise an array for display (as in the Guided Grad-CAM paper): uint8."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1 + 0.5
    img = np.clip(img, 0, 1)
    return np.uint8(img * 255)
