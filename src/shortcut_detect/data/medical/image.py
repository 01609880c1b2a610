"""The result of reading a medical file: :class:`MedicalImage`, and what it shares.

Geometry convention (one for DICOM and NIfTI): ``affine`` maps an array index, spatial axes in
the array's order, to RAS+ millimetres (x grows towards the patient's right, y anterior, z
superior), the NIfTI convention, so a heatmap saved with it overlays the image in 3D Slicer or
ITK-SNAP. A 2-D image is the slice ``(row, column, 0)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shortcut_detect.data.medical.window import Window, apply_window

__all__ = [
    "MEDICAL_EXTRA",
    "MedicalDependencyError",
    "MedicalImage",
    "require",
]

MEDICAL_EXTRA = "pip install 'shortcut-detect[medical]'"


class MedicalDependencyError(ImportError):
    """A package needed to read medical files is not installed (the message says which)."""


def require(module: str, purpose: str) -> Any:
    """Import an optional package, or raise :class:`MedicalDependencyError` naming the extra.

    Parameters
    ----------
    module:
        ``"pydicom"`` or ``"nibabel"``.
    purpose:
        What needs it, e.g. ``"reading DICOM files"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MedicalDependencyError(
            f"{purpose} needs the {module} package, which is not installed: {MEDICAL_EXTRA}"
        ) from error


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True, eq=False, repr=False)
class MedicalImage:
    """A DICOM file, DICOM series or NIfTI volume read for analysis.

    Attributes
    ----------
    array:
        float32 values in the modality's units after the rescale (Hounsfield units for CT).
        Axes: ``(rows, columns)`` for a 2-D image, ``(frames, rows, columns)`` for a
        multi-frame file, ``(slices, rows, columns)`` for a DICOM series (slices sorted along
        the slice normal), NIfTI's own voxel order ``(i, j, k[, t])`` for NIfTI; colour images
        have a last axis of 3 (RGB).
    source:
        The path the caller gave.
    kind:
        ``"dicom"``, ``"dicom-series"``, ``"nifti"`` or ``"slice"`` (from
        :func:`~shortcut_detect.data.medical.nifti_slices`).
    spacing:
        Millimetres between samples along each spatial axis of ``array``, or ``None`` when
        the file does not say.
    affine:
        4x4 matrix from array index (spatial axes in array order) to RAS+ millimetres, or
        ``None`` without geometry (e.g. a plain radiograph).
    photometric:
        ``"MONOCHROME2"`` (high = bright), ``"MONOCHROME1"`` (high = dark: the display
        inverts it, the array keeps the file's values) or ``"RGB"``.
    units:
        Units of the values, e.g. ``"HU"``; ``""`` when unknown.
    window:
        The display window :meth:`display` applies (chosen when reading).
    file_window:
        The window stored in the file, if any.
    metadata:
        Non-identifying technical attributes only (an allow-list: modality, sizes, bit
        depth, spacing, rescale, transfer syntax...). Never patient, study or institution
        attributes.
    is_volume:
        Whether the spatial axes are 3-D (a series, a NIfTI volume, a multi-frame file with
        slice positions), as opposed to one 2-D image or a sequence of 2-D frames.
    """

    array: np.ndarray
    source: str
    kind: str
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    photometric: str
    units: str
    window: Window
    file_window: Window | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    is_volume: bool = False

    @property
    def is_color(self) -> bool:
        """Whether the last axis holds RGB channels."""
        return self.photometric == "RGB"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The array's shape without the colour axis."""
        return tuple(self.array.shape[:-1] if self.is_color else self.array.shape)

    def display(self, window: Window | None = None) -> np.ndarray:
        """The image as float32 in [0, 1] for display or a model: ``window`` (default
        :attr:`window`) applied, MONOCHROME1 inverted so that bright means dense."""
        out = apply_window(self.array, window or self.window)
        if self.photometric == "MONOCHROME1":
            np.subtract(1.0, out, out=out)
        return out

    def to_pil(self, window: Window | None = None) -> Any:
        """A 2-D image as an 8-bit PIL image (``L`` or ``RGB``), for the 2-D image pipeline.

        Raises
        ------
        ValueError
            The image is a volume or has several frames (pick a slice or frame first).
        """
        from PIL import Image

        if len(self.spatial_shape) != 2:
            what = "a 3-D volume" if self.is_volume else "a multi-frame image"
            raise ValueError(
                f"{self.source}: {what} of shape {self.spatial_shape}; a 2-D model needs one "
                "image: read it slice-wise (--slices axial|coronal|sagittal) or use a 3-D model"
            )
        scaled = self.display(window)
        scaled *= 255.0
        scaled += 0.5
        pixels = scaled.astype(np.uint8)
        return Image.fromarray(pixels, mode="RGB" if self.is_color else "L")

    def frame(self, index: int) -> MedicalImage:
        """One frame (or slice along the first axis) of a multi-frame image or volume, as a
        2-D image with the same window."""
        if len(self.spatial_shape) != 3:
            raise ValueError(
                f"{self.source}: frame() needs 3 spatial axes, got {self.spatial_shape}"
            )
        count = self.spatial_shape[0]
        if not -count <= index < count:
            raise IndexError(f"{self.source}: frame {index} out of range (0..{count - 1})")
        index %= count
        affine = None
        if self.affine is not None:
            # (row, column, 0) of the frame = (index, row, column) of the stack.
            affine = np.eye(4)
            affine[:3, 0] = self.affine[:3, 1]
            affine[:3, 1] = self.affine[:3, 2]
            affine[:3, 2] = self.affine[:3, 0]
            affine[:3, 3] = self.affine[:3, 3] + index * self.affine[:3, 0]
        return replace(
            self,
            array=self.array[index],
            spacing=None if self.spacing is None else tuple(self.spacing[1:]),
            affine=affine,
            is_volume=False,
            source=f"{self.source}#{index}",
            metadata={**self.metadata, "frame": index},
        )

    def canonical(self) -> MedicalImage:
        """The volume with its voxel axes reordered and flipped to the closest RAS+ order
        (``array[x, y, z]``, x towards the patient's right), as nibabel's
        ``as_closest_canonical`` and MONAI's ``Orientation("RAS")`` do: the same layout for
        a DICOM series and a NIfTI file of the same scan, e.g. for a 3-D model."""
        if self.affine is None or len(self.spatial_shape) != 3:
            raise ValueError(f"{self.source}: canonical() needs a 3-D volume with an affine")
        perm, flips = reorientation(self.affine, [(0, 1), (1, 1), (2, 1)])
        axes = (*perm, 3) if self.is_color else perm
        array = self.array.transpose(axes)
        if flips:
            array = np.flip(array, flips)
        affine = reoriented_affine(self.affine, self.spatial_shape, perm, flips)
        return replace(
            self,
            array=np.ascontiguousarray(array),
            affine=affine,
            spacing=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        )

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description (no identifying attributes) for ``summary.json``."""
        return {
            "source": self.source,
            "kind": self.kind,
            "shape": [int(n) for n in self.array.shape],
            "is_volume": bool(self.is_volume),
            "spacing_mm": None if self.spacing is None else [float(s) for s in self.spacing],
            "affine": None if self.affine is None else self.affine.tolist(),
            "photometric": self.photometric,
            "inverted_for_display": self.photometric == "MONOCHROME1",
            "units": self.units,
            "window": self.window.describe(),
            "file_window": None if self.file_window is None else self.file_window.describe(),
            "metadata": dict(self.metadata),
        }

    def __repr__(self) -> str:
        spacing = None if self.spacing is None else tuple(round(s, 4) for s in self.spacing)
        return (
            f"MedicalImage(kind={self.kind!r}, source={self.source!r}, "
            f"shape={tuple(self.array.shape)}, spacing={spacing}, units={self.units!r}, "
            f"photometric={self.photometric!r}, window={self.window.label()} "
            f"[{self.window.source}])"
        )


# -- orientation (shared by DICOM series and NIfTI) ---------------------------------------------


def axis_directions(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each voxel axis: the RAS world axis (0=x, 1=y, 2=z) it runs closest to, and +1/-1.

    Each world axis is used once (the largest remaining direction cosine wins), so oblique
    acquisitions get the nearest orthogonal orientation.
    """
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(directions, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(directions)):
        raise ValueError("the affine has a zero or non-finite voxel axis")
    cosines = np.abs(directions / norms)
    result: list[tuple[int, int] | None] = [None, None, None]
    free_axes, free_world = {0, 1, 2}, {0, 1, 2}
    while free_axes:
        best = max(
            ((cosines[w, a], a, w) for a in free_axes for w in free_world), key=lambda t: t[0]
        )
        _, axis, world = best
        result[axis] = (world, 1 if directions[world, axis] >= 0 else -1)
        free_axes.discard(axis)
        free_world.discard(world)
    return [r for r in result if r is not None]


def reorientation(
    affine: np.ndarray, wanted: list[tuple[int, int]]
) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """Axis permutation and flips that bring voxel axes to ``wanted`` world directions.

    ``wanted[o] = (world_axis, sign)`` for output axis ``o``. Returns ``(perm, flips)`` such
    that ``np.flip(array.transpose(perm), flips)`` has those directions.
    """
    directions = axis_directions(affine)
    perm: list[int] = []
    flips: list[int] = []
    for output, (world, sign) in enumerate(wanted):
        axis = next(a for a, (w, _) in enumerate(directions) if w == world)
        perm.append(axis)
        if directions[axis][1] != sign:
            flips.append(output)
    return (perm[0], perm[1], perm[2]), tuple(flips)


def reoriented_affine(
    affine: np.ndarray, shape: tuple[int, ...], perm: tuple[int, int, int], flips: tuple[int, ...]
) -> np.ndarray:
    """The affine of ``np.flip(array.transpose(perm), flips)`` given ``array``'s affine."""
    out = np.eye(4)
    out[:3, 3] = affine[:3, 3]
    for output, axis in enumerate(perm):
        column = affine[:3, axis].copy()
        if output in flips:
            out[:3, 3] += column * (shape[axis] - 1)
            column = -column
        out[:3, output] = column
    return out
