"""NIfTI volumes (nibabel): reading, slicing for 2-D models, and heatmap export.

* :func:`read_nifti` reads a ``.nii``/``.nii.gz`` file with its scaling and affine.
* :func:`nifti_slices` cuts any volume with an affine (NIfTI or DICOM series) into axial,
  coronal or sagittal slices in radiological display orientation, and maps per-slice
  heatmaps back into the volume (:meth:`VolumeSlices.to_volume`).
* :func:`save_heatmap_nifti` writes a heatmap as a NIfTI aligned with the source's affine,
  so it opens as an overlay in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shortcut_detect.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from shortcut_detect.data.medical.image import (
    MedicalImage,
    first_line,
    reorientation,
    reoriented_affine,
    require,
)
from shortcut_detect.data.medical.window import WindowSpec, resolve_window

__all__ = [
    "NIFTI_SUFFIXES",
    "PLANES",
    "VolumeSlices",
    "nifti_slices",
    "read_nifti",
    "resample_map",
    "save_heatmap_nifti",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# For each plane: (world axis, sign) of the output axes (slice, row, column) in RAS+.
# Rows run from anterior/superior down, columns from the patient's right to left
# (radiological convention); sagittal columns run from anterior to posterior.
PLANES: dict[str, list[tuple[int, int]]] = {
    "axial": [(2, 1), (1, -1), (0, -1)],
    "coronal": [(1, 1), (2, -1), (0, -1)],
    "sagittal": [(0, 1), (2, -1), (1, -1)],
}

# Technical NIfTI header fields; free-text fields (descrip, aux_file, db_name, intent_name)
# can hold anything and are left out.
_SAFE_HEADER_FIELDS = ("datatype", "bitpix", "qform_code", "sform_code", "slice_code")


def has_nifti_suffix(path: str | os.PathLike[str]) -> bool:
    """Whether the name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(
    path: str | os.PathLike[str],
    *,
    window: WindowSpec = "auto",
    volume: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> MedicalImage:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    path:
        The file.
    window:
        Display window: ``"auto"`` (percentiles 0.5-99.5; NIfTI stores no window),
        ``"full"``, ``"CENTER,WIDTH"`` or a :class:`Window`.
    volume:
        For a 4-D file, the time point to keep (``None`` keeps all: shape ``(i, j, k, t)``).
    max_pixels:
        Refuse files with more voxels than this before reading the data.

    Returns
    -------
    MedicalImage
        ``array`` in nibabel's voxel order with the file's scaling applied (float32),
        ``affine`` the file's (sform, else qform), ``spacing`` the voxel sizes in mm.

    Raises
    ------
    ImageLoadError
        Not a NIfTI file, truncated or corrupt data, unsupported data type, too many voxels.
    """
    nibabel = require("nibabel", "reading NIfTI files")
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    if not has_nifti_suffix(path):
        raise ImageLoadError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        image = nibabel.load(path)
    except Exception as error:
        raise ImageLoadError(
            f"{path}: not a NIfTI file or a corrupt one ({first_line(error)})"
        ) from None
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise ImageLoadError(f"{path}: not a NIfTI image ({type(image).__name__})")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) not in (2, 3, 4) or any(n == 0 for n in shape):
        raise ImageLoadError(f"{path}: unsupported NIfTI shape {shape} (2-D, 3-D or 4-D only)")
    voxels = int(np.prod(shape))
    if voxels > max_pixels:
        raise ImageLoadError(
            f"{path}: {'x'.join(map(str, shape))} = {voxels:,} voxels is above the limit of "
            f"{max_pixels:,} (raise it with --max-pixels if the file is trusted)"
        )
    if image.get_data_dtype().kind not in "biuf":
        raise ImageLoadError(
            f"{path}: NIfTI data type {image.get_data_dtype()} is not supported (scalar only)"
        )
    try:
        if len(shape) == 4 and volume is not None:
            if not -shape[3] <= volume < shape[3]:
                raise ImageLoadError(f"{path}: volume {volume} out of range (0..{shape[3] - 1})")
            data = np.asarray(image.dataobj[..., volume], dtype=np.float32)
        else:
            data = np.asarray(image.get_fdata(dtype=np.float32))
    except ImageLoadError:
        raise
    except Exception as error:
        raise ImageLoadError(
            f"{path}: corrupt or truncated NIfTI data ({first_line(error)})"
        ) from None
    if data.ndim == 2:
        data = data[:, :, None]
    header = image.header
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    zooms = (*zooms, 1.0, 1.0)[: min(data.ndim, 3)]
    affine = np.asarray(image.affine, dtype=np.float64)
    metadata: dict[str, Any] = {"format": type(image).__name__, "shape": list(shape)}
    for name in _SAFE_HEADER_FIELDS:
        if name in header:
            metadata[name] = int(np.asarray(header[name]))
    spatial_units, time_units = header.get_xyzt_units()
    metadata["spatial_units"] = spatial_units
    if len(shape) == 4:
        metadata["time_units"] = time_units
        if volume is not None:
            metadata["volume"] = volume % shape[3]
    try:
        chosen = resolve_window(window, data)
    except ValueError as error:
        raise ImageLoadError(f"{path}: {error}") from None
    return MedicalImage(
        array=data,
        source=str(path),
        kind="nifti",
        spacing=zooms,
        affine=affine,
        photometric="MONOCHROME2",
        units="",
        window=chosen,
        metadata=metadata,
        is_volume=data.ndim >= 3 and data.shape[2] > 1,
    )


def resample_map(heatmap: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a 2-D or 3-D map to ``shape`` ((bi/tri)linear, voxel centres aligned).

    The same interpolation the CAM methods use to upsample to the input, so a map computed
    at the model's resolution lands on the right voxels.
    """
    array = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    if array.ndim not in (2, 3) or len(shape) != array.ndim:
        raise ValueError(
            f"resample_map takes a 2-D or 3-D map and a shape of the same rank, got "
            f"{tuple(array.shape)} -> {tuple(shape)}"
        )
    if tuple(array.shape) == tuple(shape):
        return array.numpy()
    mode = "bilinear" if array.ndim == 2 else "trilinear"
    resized = torch.nn.functional.interpolate(
        array[None, None], size=tuple(int(n) for n in shape), mode=mode, align_corners=False
    )
    return resized[0, 0].numpy()


@dataclass(frozen=True, eq=False)
class VolumeSlices:
    """A volume cut into 2-D slices of one plane, in display orientation.

    Attributes
    ----------
    plane:
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    stack:
        ``(slices, rows, columns)`` float32, the volume's values (not windowed).
    spacing:
        ``(row, column)`` millimetres of a slice.
    volume:
        The volume the slices come from (its window, photometric and affine apply).
    """

    plane: str
    stack: np.ndarray
    spacing: tuple[float, float]
    volume: MedicalImage = field(repr=False)
    _perm: tuple[int, int, int] = field(repr=False, default=(0, 1, 2))
    _flips: tuple[int, ...] = field(repr=False, default=())

    def __len__(self) -> int:
        return int(self.stack.shape[0])

    def image(self, index: int) -> MedicalImage:
        """Slice ``index`` as a 2-D :class:`MedicalImage` (same window as the volume);
        ``to_pil()`` gives the input of a 2-D model."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"slice {index} out of range (0..{len(self) - 1})")
        index %= len(self)
        return MedicalImage(
            array=self.stack[index],
            source=f"{self.volume.source}#{self.plane}{index}",
            kind="slice",
            spacing=self.spacing,
            affine=None,
            photometric=self.volume.photometric,
            units=self.volume.units,
            window=self.volume.window,
            file_window=self.volume.file_window,
            metadata={**self.volume.metadata, "plane": self.plane, "slice": index},
        )

    def to_volume(self, maps: np.ndarray | torch.Tensor) -> np.ndarray:
        """Put per-slice maps ``(slices, h, w)`` back into the volume's voxel order.

        Maps at another in-plane size (e.g. the model's input size) are resized to the slice
        size first. The result has the volume's spatial shape and goes with its affine
        (:func:`save_heatmap_nifti`).
        """
        array = np.asarray(maps, dtype=np.float32)
        if array.ndim != 3 or array.shape[0] != len(self):
            raise ValueError(
                f"to_volume takes one map per slice, shape ({len(self)}, h, w); got "
                f"{tuple(array.shape)}"
            )
        rows, columns = self.stack.shape[1:]
        if array.shape[1:] != (rows, columns):
            array = np.stack([resample_map(m, (rows, columns)) for m in array])
        if self._flips:
            array = np.flip(array, self._flips)
        return np.ascontiguousarray(array.transpose(np.argsort(self._perm)))


def nifti_slices(volume: MedicalImage, plane: str) -> VolumeSlices:
    """Cut a 3-D volume with an affine (NIfTI or DICOM series) into slices of ``plane``.

    The plane is found from the affine (the voxel axis closest to the superior direction is
    the axial normal, and so on), so the slices look the same whatever the file's voxel
    order: rows from anterior (axial) or superior (coronal, sagittal) downwards, columns
    from the patient's right to left (sagittal: anterior to posterior).

    Raises
    ------
    ValueError
        Unknown plane, a volume without an affine, or not 3-D (pick a 4-D file's time point
        with ``read_nifti(..., volume=t)``).
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}")
    if volume.affine is None:
        raise ValueError(f"{volume.source}: no geometry (affine) to find the {plane} plane from")
    if volume.array.ndim != 3 or volume.is_color:
        raise ValueError(
            f"{volume.source}: slices need a 3-D grayscale volume, got shape "
            f"{tuple(volume.array.shape)} (for a 4-D NIfTI pass volume=t to read_nifti)"
        )
    perm, flips = reorientation(volume.affine, PLANES[plane])
    stack = volume.array.transpose(perm)
    if flips:
        stack = np.flip(stack, flips)
    oriented = reoriented_affine(volume.affine, volume.array.shape, perm, flips)
    voxel = np.linalg.norm(oriented[:3, :3], axis=0)
    return VolumeSlices(
        plane=plane,
        stack=np.ascontiguousarray(stack),
        spacing=(float(voxel[1]), float(voxel[2])),
        volume=volume,
        _perm=perm,
        _flips=flips,
    )


def save_heatmap_nifti(
    heatmap: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, ...] | None = None,
) -> Path:
    """Write a heatmap as a NIfTI file aligned with the source image.

    Parameters
    ----------
    heatmap:
        2-D ``(rows, columns)`` or 3-D map, in the source array's spatial axis order (use
        :meth:`VolumeSlices.to_volume` for slice-wise maps).
    affine:
        The source's :attr:`MedicalImage.affine` (array index -> RAS+ mm).
    path:
        Output file, ``.nii`` or ``.nii.gz``.
    shape:
        The source's spatial shape; a map at another resolution (the CAM's) is resampled
        to it first.

    Returns
    -------
    Path
        The written file (float32 data; sform and, when the affine has no shear, qform set
        to the affine with code 1, scanner coordinates).
    """
    nibabel = require("nibabel", "writing NIfTI files")
    path = Path(path)
    if not has_nifti_suffix(path):
        raise ValueError(f"{path}: a NIfTI heatmap needs a .nii or .nii.gz name")
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"the affine must be a finite 4x4 matrix, got shape {matrix.shape}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("the affine is singular (a zero-size voxel axis)")
    data = np.asarray(heatmap.detach().cpu() if isinstance(heatmap, torch.Tensor) else heatmap)
    data = data.astype(np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"a heatmap is 2-D or 3-D, got shape {data.shape}")
    if shape is not None and tuple(data.shape) != tuple(shape):
        data = resample_map(data, tuple(shape))
    if data.ndim == 2:
        data = data[:, :, None]
    image = nibabel.Nifti1Image(data, matrix)
    image.header.set_xyzt_units("mm")
    image.set_sform(matrix, code=1)
    directions = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    if np.allclose(directions.T @ directions, np.eye(3), atol=1e-5):
        image.set_qform(matrix, code=1)
    else:
        image.set_qform(None, code=0)  # a sheared (gantry tilt) affine: the sform only
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, path)
    return path
