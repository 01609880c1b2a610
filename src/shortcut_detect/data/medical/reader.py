"""One entry point for medical files: :func:`read_medical` picks the reader."""

from __future__ import annotations

import os
from pathlib import Path

from shortcut_detect.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from shortcut_detect.data.medical.dicom import (
    DICOM_SUFFIXES,
    is_dicom_file,
    read_dicom,
    read_dicom_series,
)
from shortcut_detect.data.medical.image import MedicalImage
from shortcut_detect.data.medical.nifti import NIFTI_SUFFIXES, has_nifti_suffix, read_nifti
from shortcut_detect.data.medical.window import WindowSpec

__all__ = ["MEDICAL_SUFFIXES", "is_medical_path", "read_medical"]

MEDICAL_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES


def is_medical_path(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_medical` should read ``path``: a DICOM or NIfTI suffix, or a file
    with the DICOM ``DICM`` marker (DICOM files often have no suffix)."""
    path = Path(path)
    if path.name.lower().endswith(MEDICAL_SUFFIXES):
        return True
    return path.is_file() and is_dicom_file(path)


def read_medical(
    path: str | os.PathLike[str],
    *,
    window: WindowSpec = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> MedicalImage:
    """Read a DICOM file, a folder holding one DICOM series, or a NIfTI file.

    A folder is a series (:func:`read_dicom_series`); ``.nii``/``.nii.gz`` is NIfTI
    (:func:`read_nifti`); a DICOM suffix or the ``DICM`` marker at byte 128 is DICOM
    (:func:`read_dicom`). ``window`` and ``max_pixels`` are passed on.

    Raises
    ------
    ImageLoadError
        Missing path, a file of another format, or whatever the reader refuses.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, window=window, max_pixels=max_pixels)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file or folder")
    if has_nifti_suffix(path):
        return read_nifti(path, window=window, max_pixels=max_pixels)
    if path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(path):
        return read_dicom(path, window=window, max_pixels=max_pixels)
    raise ImageLoadError(
        f"{path}: not a DICOM file (no 'DICM' marker at byte 128) and not NIfTI (.nii, .nii.gz)"
    )
