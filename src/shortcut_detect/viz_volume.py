"""Pictures of 3-D heatmaps: orthogonal slices through the peak and an axial montage.

Volumes are in the layout a 3-D model gets (:func:`~shortcut_detect.data.images.load_volume`):
``volume[x, y, z]`` in the closest RAS+ voxel order (x towards the patient's right, y
anterior, z superior). Slices are shown as a radiologist's viewer draws them: axial and
coronal with the patient's right on the left of the picture, sagittal with anterior on the
left; superior (coronal, sagittal) and anterior (axial) at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shortcut_detect.viz import overlay_heatmap

__all__ = [
    "PLANE_AXES",
    "VolumeView",
    "grey_volume",
    "orthogonal_views",
    "peak_voxel",
    "resize_volume",
    "volume_panel",
    "volume_slice",
]

# The axis of volume[x, y, z] each plane fixes.
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def resize_volume(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A ``(X, Y, Z)`` float volume resized (trilinear) to ``shape``."""
    array = np.asarray(volume, dtype=np.float32)
    if tuple(array.shape) == tuple(shape):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    resized = torch.nn.functional.interpolate(
        tensor, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False
    )
    return resized[0, 0].numpy()


def grey_volume(display: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A volume's display values ``(X, Y, Z)`` or RGB ``(X, Y, Z, 3)`` in [0, 1] as grey
    values resized (trilinear) to ``shape``, e.g. the model's input size, to lay a heatmap
    of that size over it."""
    array = np.asarray(display, dtype=np.float32)
    if array.ndim == 4:
        array = array.mean(axis=-1)
    return resize_volume(array, shape)


def volume_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of ``volume[x, y, z]`` as a 2-D picture ``(rows, columns)`` in radiological
    orientation: top of the picture superior (coronal, sagittal) or anterior (axial); the
    patient's right (axial, coronal) or anterior (sagittal) on the left."""
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {', '.join(PLANE_AXES)}, got {plane!r}")
    axis = PLANE_AXES[plane]
    count = volume.shape[axis]
    if not 0 <= index < count:
        raise IndexError(f"{plane} slice {index} out of range (0..{count - 1})")
    picture = np.take(volume, index, axis=axis)  # (x, y), (x, z) or (y, z)
    # Rows: the second axis, decreasing (top = anterior or superior); columns: the first
    # axis, decreasing (left = the patient's right, or anterior).
    return np.ascontiguousarray(picture.T[::-1, ::-1])


def peak_voxel(heatmap: np.ndarray) -> tuple[int, int, int]:
    """``(x, y, z)`` of the heatmap's maximum (the first one in C order)."""
    flat = int(np.argmax(np.asarray(heatmap)))
    x, y, z = np.unravel_index(flat, np.asarray(heatmap).shape)
    return int(x), int(y), int(z)


@dataclass(frozen=True)
class VolumeView:
    """A picture of a volume and its heatmap: the image and the overlay, same layout."""

    image: np.ndarray  # uint8 (H, W, 3)
    overlay: np.ndarray  # uint8 (H, W, 3)
    point: tuple[int, int, int]


def _pair(volume: np.ndarray, heatmap: np.ndarray, plane: str, index: int, alpha: float):
    picture = np.clip(volume_slice(volume, plane, index), 0.0, 1.0)
    heat = volume_slice(heatmap, plane, index)
    rgb = np.repeat(picture[..., None], 3, axis=2)
    return np.uint8(rgb * 255 + 0.5), overlay_heatmap(rgb, heat, alpha=alpha)


def _row(pictures: list[np.ndarray], gap: int = 2) -> np.ndarray:
    height = max(p.shape[0] for p in pictures)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap), (0, 0))) for p in pictures]
    return np.concatenate(padded, axis=1)[:, :-gap] if gap else np.concatenate(padded, axis=1)


def _stack(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(padded, axis=0)[:-gap]


def _check(volume: np.ndarray, heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    volume = np.asarray(volume, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"a volume is (X, Y, Z), got shape {volume.shape}")
    if heatmap.shape != volume.shape:
        heatmap = resize_volume(heatmap, volume.shape)
    return volume, heatmap


def orthogonal_views(
    volume: np.ndarray,
    heatmap: np.ndarray,
    point: tuple[int, int, int] | None = None,
    *,
    alpha: float = 0.45,
) -> VolumeView:
    """Sagittal, coronal and axial slices through ``point`` (default: the heatmap's peak),
    side by side, as image and overlay. ``volume`` is in [0, 1]; a ``heatmap`` of another
    shape is resized onto it."""
    volume, heatmap = _check(volume, heatmap)
    point = peak_voxel(heatmap) if point is None else point
    pairs = [
        _pair(volume, heatmap, plane, point[axis], alpha) for plane, axis in PLANE_AXES.items()
    ]
    return VolumeView(_row([p[0] for p in pairs]), _row([p[1] for p in pairs]), point)


def volume_panel(
    volume: np.ndarray, heatmap: np.ndarray, *, montage: int = 8, alpha: float = 0.45
) -> VolumeView:
    """The report's picture of a volume: the three orthogonal slices through the heatmap's
    peak on top, an axial montage of ``montage`` evenly spaced slices below (superior
    first), as image and overlay."""
    volume, heatmap = _check(volume, heatmap)
    views = orthogonal_views(volume, heatmap, alpha=alpha)
    depth = volume.shape[PLANE_AXES["axial"]]
    indices = np.unique(np.linspace(depth - 1, 0, min(montage, depth)).round().astype(int))[::-1]
    pairs = [_pair(volume, heatmap, "axial", int(k), alpha) for k in indices]
    per_row = (len(pairs) + 1) // 2 if len(pairs) > 4 else len(pairs)
    image_rows = [
        _row([p[0] for p in pairs[i : i + per_row]]) for i in range(0, len(pairs), per_row)
    ]
    overlay_rows = [
        _row([p[1] for p in pairs[i : i + per_row]]) for i in range(0, len(pairs), per_row)
    ]
    return VolumeView(
        _stack([views.image, *image_rows]), _stack([views.overlay, *overlay_rows]), views.point
    )
