"""DICOM files and series (pydicom, with the pylibjpeg plugins for compressed data).

:func:`read_dicom` reads one file (2-D, multi-frame, RGB, palette colour; compressed
transfer syntaxes through pydicom's decoders), :func:`read_dicom_series` a folder holding
one series, sorted along the slice normal. Values get the modality rescale (CT in Hounsfield
units); MONOCHROME1 is inverted on display; the file's VOI LUT or window is the default
display window.

Nothing identifying leaves this module: the metadata is an allow-list of technical
attributes, and error messages name the path the caller gave and the technical reason only.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from shortcut_detect.data.medical.image import MEDICAL_EXTRA, MedicalImage, first_line, require
from shortcut_detect.data.medical.window import (
    Window,
    WindowSpec,
    frame_groups,
    resolve_window,
    window_from_dicom,
)

__all__ = [
    "DICOM_SUFFIXES",
    "SAFE_DICOM_KEYWORDS",
    "is_dicom_file",
    "read_dicom",
    "read_dicom_series",
    "safe_dicom_metadata",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# The only attributes copied out of a file: technical, never about the patient, the study,
# the operator, the institution or the device's identity (serial number, station name).
SAFE_DICOM_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "KVP",
    "ViewPosition",
    "ImageLaterality",
    "ConvolutionKernel",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "PresentationIntentType",
    "BurnedInAnnotation",
    "LossyImageCompression",
)

# Which pylibjpeg plugin decodes which compressed transfer syntax (for the error message).
_PLUGIN_FOR_SYNTAX = {
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ),
        "pylibjpeg-openjpeg",
    ),
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
        ),
        "pylibjpeg-libjpeg",
    ),
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}
_TEXT_VRS = ("PN", "LO", "SH", "DA", "DT", "TM", "AS", "UI", "LT", "ST", "UT", "UC", "AE", "IS")
_IMAGE_GROUPS = (0x0008, 0x0018, 0x0020, 0x0028)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SLICE_TOLERANCE = 1e-3  # mm; positions closer than this are the same slice


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's warnings and log records: they can quote attribute values (names,
    dates, UIDs) of the file being read."""
    logger = logging.getLogger("pydicom")
    logger.addFilter(_drop_all)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeFilter(_drop_all)


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a DICOM Part 10 file (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _plain(value: Any) -> Any:
    """A DICOM value as plain JSON (numbers, strings, lists of them); ``None`` otherwise."""
    if isinstance(value, (bytes, bytearray)) or hasattr(value, "family_name"):
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        items = [_plain(v) for v in value]
        return items if all(v is not None for v in items) else None
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, str):
        return value.strip()
    return None


@functools.cache
def _safe_tags() -> tuple[tuple[str, int], ...]:
    """``(keyword, tag)`` of :data:`SAFE_DICOM_KEYWORDS`: looking elements up by tag skips
    pydicom's keyword translation (0.22 -> 0.06 ms per file, of a read of about 2 ms)."""
    from pydicom.datadict import tag_for_keyword

    return tuple((keyword, int(tag_for_keyword(keyword))) for keyword in SAFE_DICOM_KEYWORDS)


def safe_dicom_metadata(ds: Any) -> dict[str, Any]:
    """The allow-listed technical attributes of a dataset, plus the transfer syntax and SOP
    class names. Nothing else: no names, ids, dates, UIDs or institutions."""
    metadata: dict[str, Any] = {}
    for keyword, tag in _safe_tags():
        if tag in ds:
            value = _plain(ds[tag].value)
            if value not in (None, "", []):
                metadata[keyword] = value
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is not None:
        metadata["TransferSyntax"] = syntax.name
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None and sop_class.name != str(sop_class):
        metadata["SOPClass"] = sop_class.name  # only registered (standard) class names
    return metadata


def _identifying_values(ds: Any) -> list[str]:
    """Text values of every non-allow-listed attribute (to scrub them from messages)."""
    values: list[str] = []
    try:
        for element in ds.iterall():
            if element.VR in _TEXT_VRS and element.keyword not in SAFE_DICOM_KEYWORDS:
                for value in element.value if element.VM > 1 else [element.value]:
                    text = str(value).strip()
                    if len(text) >= 3:
                        values.append(text)
    except Exception:  # a half-read dataset: scrub what was collected
        pass
    return sorted(set(values), key=len, reverse=True)


def _error(path: Any, reason: str, ds: Any = None) -> ImageLoadError:
    if ds is not None:
        for value in _identifying_values(ds):
            reason = reason.replace(value, "[removed]")
    return ImageLoadError(f"{path}: {reason}")


def _read_dataset(path: Path) -> Any:
    pydicom = require("pydicom", "reading DICOM files")
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    has_magic = is_dicom_file(path)
    if not has_magic and path.suffix.lower() not in DICOM_SUFFIXES:
        raise ImageLoadError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128)")
    try:
        ds = pydicom.dcmread(path, force=not has_magic)
    except InvalidDicomError as error:
        raise ImageLoadError(f"{path}: not a DICOM file ({first_line(error)})") from error
    except Exception as error:
        raise ImageLoadError(
            f"{path}: not a DICOM file or a corrupt one ({type(error).__name__})"
        ) from error
    tags = list(ds.keys())  # tags only: iterating a Dataset would convert every element
    if not has_magic and not any(tag >> 16 in _IMAGE_GROUPS for tag in tags):
        # Without the marker pydicom parses any bytes; real data has standard groups.
        raise ImageLoadError(f"{path}: not a DICOM file (no 'DICM' marker, no DICOM elements)")
    return ds


def _check_decodable(path: Path, ds: Any) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None:
        raise _error(
            path, "no Transfer Syntax UID in the file meta information: cannot decode pixels", ds
        )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _error(
            path,
            f"no decoder exists for transfer syntax {syntax.name} ({syntax}); convert the file "
            "to an uncompressed or JPEG/JPEG 2000/RLE transfer syntax",
            ds,
        ) from None
    if not decoder.is_available:
        plugin = _PLUGIN_FOR_SYNTAX.get(str(syntax), "a pydicom pixel data plugin")
        raise _error(
            path,
            f"compressed transfer syntax {syntax.name} needs {plugin} to decode ({MEDICAL_EXTRA})",
            ds,
        )


def _from_groups(ds: Any, frame: int, sequence: str, keyword: str) -> Any:
    for group in frame_groups(ds, frame):
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


def _rescale(ds: Any, frame: int) -> tuple[float, float]:
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope, intercept = ds.get("RescaleSlope", 1.0), ds.get("RescaleIntercept", 0.0)
    else:
        slope = _from_groups(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _from_groups(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    return slope, intercept


def _units(ds: Any) -> str:
    rescale_type = ds.get("RescaleType") or _from_groups(
        ds, 0, "PixelValueTransformationSequence", "RescaleType"
    )
    if rescale_type and str(rescale_type).upper() != "US":  # US = unspecified
        return str(rescale_type)
    return "HU" if ds.get("Modality") == "CT" else ""


def _decode(path: Path, ds: Any, max_pixels: int) -> tuple[np.ndarray, str, int]:
    """Pixel values after the modality rescale (float32), the photometric interpretation
    (``MONOCHROME1``/``MONOCHROME2``/``RGB``) and the number of frames."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop_class = safe_dicom_metadata(ds).get("SOPClass") or ds.get("Modality") or "unknown"
        raise _error(path, f"DICOM file without pixel data ({sop_class}): not an image", ds)
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if k not in ds]
    if missing:
        raise _error(path, f"missing required image attribute(s) {', '.join(missing)}", ds)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except (TypeError, ValueError):
        raise _error(path, "invalid Rows, Columns, NumberOfFrames or SamplesPerPixel", ds) from None
    pixels = rows * columns * frames
    if pixels > max_pixels:
        raise _error(
            path,
            f"{frames} frame(s) of {columns}x{rows} = {pixels:,} pixels is above the limit of "
            f"{max_pixels:,} (raise it with --max-pixels if the file is trusted)",
        )
    _check_decodable(path, ds)
    try:
        raw = ds.pixel_array
        if photometric == "PALETTE COLOR":
            raw = apply_color_lut(raw, ds)
    except Exception as error:
        raise _error(path, f"corrupt or undecodable pixel data ({first_line(error)})", ds) from None
    if samples == 3 or photometric == "PALETTE COLOR":
        return np.asarray(raw, dtype=np.float32), "RGB", frames
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise _error(path, f"unsupported photometric interpretation {photometric}", ds)
    if ds.get("ModalityLUTSequence"):
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    elif frames > 1 and "RescaleSlope" not in ds and ds.get("PerFrameFunctionalGroupsSequence"):
        values = raw.astype(np.float32)
        for frame in range(frames):
            slope, intercept = _rescale(ds, frame)
            if (slope, intercept) != (1.0, 0.0):
                values[frame] *= np.float32(slope)
                values[frame] += np.float32(intercept)
    else:
        values = raw.astype(np.float32)
        slope, intercept = _rescale(ds, 0)
        if slope != 1.0:
            values *= np.float32(slope)
        if intercept != 0.0:
            values += np.float32(intercept)
    return values, photometric, frames


# -- geometry ---------------------------------------------------------------------------------


def _vector(value: Any, size: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (size,) and np.all(np.isfinite(array)) else None


def _plane(ds: Any, frame: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(position, orientation (6,), pixel spacing (row, column))`` in LPS mm, or ``None``."""
    position = _vector(ds.get("ImagePositionPatient"), 3)
    if position is None:
        position = _vector(
            _from_groups(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3
        )
    orientation = _vector(ds.get("ImageOrientationPatient"), 6)
    if orientation is None:
        orientation = _vector(
            _from_groups(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        )
    spacing = _vector(ds.get("PixelSpacing"), 2)
    if spacing is None:
        spacing = _vector(_from_groups(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if position is None or orientation is None or spacing is None or np.any(spacing <= 0):
        return None
    row_cos, col_cos = orientation[:3], orientation[3:]
    if not np.isclose(np.linalg.norm(np.cross(row_cos, col_cos)), 1.0, atol=1e-3):
        return None
    return position, orientation, spacing


def _pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        spacing = _vector(ds.get(keyword), 2)
        if spacing is not None and np.all(spacing > 0):
            return (float(spacing[0]), float(spacing[1])), keyword
    spacing = _vector(_from_groups(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if spacing is not None and np.all(spacing > 0):
        return (float(spacing[0]), float(spacing[1])), "PixelMeasuresSequence"
    return None, ""


def _slice_thickness(ds: Any) -> float:
    for value in (
        ds.get("SpacingBetweenSlices"),
        ds.get("SliceThickness"),
        _from_groups(ds, 0, "PixelMeasuresSequence", "SliceThickness"),
    ):
        try:
            thickness = float(value)
        except (TypeError, ValueError):
            continue
        if thickness > 0:
            return thickness
    return 1.0


def _image_affine(
    position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """RAS affine of ``(row, column, k)`` when ``step`` is the LPS vector of ``k`` (2-D)."""
    affine = np.eye(4)
    affine[:3, 0] = orientation[3:] * spacing[0]  # down the rows: the column direction
    affine[:3, 1] = orientation[:3] * spacing[1]  # along a row
    affine[:3, 2] = step
    affine[:3, 3] = position
    return _LPS_TO_RAS @ affine


def _stack_affine(
    path: Any, positions: np.ndarray, orientation: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sort slices along the normal; return ``(order, RAS affine of (slice, row, column),
    slice spacing)``. Refuses repeated positions and uneven spacing."""
    normal = np.cross(orientation[:3], orientation[3:])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    ordered = distance[order]
    steps = np.diff(ordered)
    if steps.size and steps.min() < _SLICE_TOLERANCE:
        raise ImageLoadError(
            f"{path}: {int(np.sum(steps < _SLICE_TOLERANCE)) + 1} slices share a position "
            "(several series, echoes or time points in one folder?); give one series per folder"
        )
    if steps.size:
        median = float(np.median(steps))
        if np.max(np.abs(steps - median)) > 0.01 * median + _SLICE_TOLERANCE:
            raise ImageLoadError(
                f"{path}: slice spacing is not uniform ({steps.min():.3g}..{steps.max():.3g} mm; "
                "missing slices?); a volume needs evenly spaced slices"
            )
        step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
        slice_spacing = float(np.linalg.norm(step))
    else:
        step, slice_spacing = normal, 1.0
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = orientation[3:] * spacing[0]
    affine[:3, 2] = orientation[:3] * spacing[1]
    affine[:3, 3] = positions[order[0]]
    return order, _LPS_TO_RAS @ affine, slice_spacing


def _frame_positions(ds: Any, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-frame positions of a multi-frame file that is a volume, else ``None``."""
    first = _plane(ds, 0)
    if first is None:
        return None
    _, orientation, spacing = first
    if ds.get("PerFrameFunctionalGroupsSequence"):
        planes = [_plane(ds, frame) for frame in range(frames)]
        if any(p is None or not np.allclose(p[1], orientation, atol=1e-4) for p in planes):
            return None
        return np.stack([p[0] for p in planes if p is not None]), orientation, spacing
    offsets = _vector(ds.get("GridFrameOffsetVector"), frames)
    if offsets is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    positions = first[0] + (offsets - offsets[0])[:, None] * normal
    return positions, orientation, spacing


# -- public readers ---------------------------------------------------------------------------


def read_dicom(
    path: str | os.PathLike[str],
    *,
    window: WindowSpec = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> MedicalImage:
    """Read one DICOM file.

    Parameters
    ----------
    path:
        A DICOM Part 10 file (``DICM`` marker) or a ``.dcm`` file without the preamble.
    window:
        Display window: ``"auto"`` (the file's VOI LUT or Window Center/Width, else
        percentiles 0.5-99.5), ``"full"``, ``"CENTER,WIDTH"`` or a :class:`Window`. Colour
        images default to their full bit range.
    max_pixels:
        Refuse files with more pixels (all frames) than this before decoding.

    Returns
    -------
    MedicalImage
        2-D ``(rows, columns)``, multi-frame ``(frames, rows, columns)`` (a volume with an
        affine when the frames carry slice positions, sorted along the normal), colour with
        a last axis of 3.

    Raises
    ------
    ImageLoadError
        Not DICOM, no pixel data, a compressed transfer syntax without its decoder,
        corrupt data, too many pixels. The message never quotes patient attributes.
    MedicalDependencyError
        pydicom is not installed.
    """
    with _quiet():
        return _read_dicom(Path(path), window, max_pixels)


def _read_dicom(path: Path, window: WindowSpec, max_pixels: int) -> MedicalImage:
    ds = _read_dataset(path)
    values, photometric, frames = _decode(path, ds, max_pixels)
    spacing, spacing_source = _pixel_spacing(ds)
    metadata = safe_dicom_metadata(ds)
    if spacing_source:
        metadata["spacing_source"] = spacing_source
    affine = None
    is_volume = False
    spacing_all: tuple[float, ...] | None = spacing
    frame_geometry = _frame_positions(ds, frames) if frames > 1 and values.ndim >= 3 else None
    if frame_geometry is not None:
        positions, orientation, in_plane = frame_geometry
        order, affine, slice_spacing = _stack_affine(path, positions, orientation, in_plane)
        if not np.array_equal(order, np.arange(frames)):
            values = values[order]
        spacing_all = (slice_spacing, float(in_plane[0]), float(in_plane[1]))
        is_volume = True
    elif frames == 1 or values.ndim == (3 if photometric == "RGB" else 2):
        plane = _plane(ds)
        if plane is not None:
            position, orientation, in_plane = plane
            normal = np.cross(orientation[:3], orientation[3:])
            affine = _image_affine(position, orientation, in_plane, normal * _slice_thickness(ds))
    file_window = None if photometric == "RGB" else window_from_dicom(ds)
    chosen = _choose_window(path, window, values, file_window, photometric, ds)
    return MedicalImage(
        array=values,
        source=str(path),
        kind="dicom",
        spacing=spacing_all,
        affine=affine,
        photometric=photometric,
        units="" if photometric == "RGB" else _units(ds),
        window=chosen,
        file_window=file_window,
        metadata=metadata,
        is_volume=is_volume,
    )


def _choose_window(
    path: Any,
    spec: WindowSpec,
    values: np.ndarray,
    file_window: Window | None,
    photometric: str,
    ds: Any,
) -> Window:
    if photometric == "RGB" and (spec is None or spec == "auto"):
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        return Window.from_range(0.0, float(2**bits - 1), source=f"full {bits}-bit range (colour)")
    try:
        return resolve_window(spec, values, file_window)
    except ValueError as error:
        raise ImageLoadError(f"{path}: {error}") from None


def _series_files(folder: Path) -> list[Path]:
    files = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if entry.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(entry):
            files.append(entry)
    return files


def read_dicom_series(
    folder: str | os.PathLike[str],
    *,
    window: WindowSpec = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> MedicalImage:
    """Read a folder holding one DICOM series as a volume ``(slices, rows, columns)``.

    Slices are sorted by *Image Position (Patient)* projected on the slice normal, and the
    affine maps ``(slice, row, column)`` to RAS+ mm (so the k-th slice's position is
    ``affine @ (k, 0, 0, 1)``). Without positions the slices are sorted by *Instance
    Number* and there is no affine. Each slice gets its own rescale. A folder with a single
    (multi-frame) file is read with :func:`read_dicom`. Files without the ``DICM`` marker or
    a DICOM suffix are ignored.

    Raises
    ------
    ImageLoadError
        No DICOM files, several series, slices of different sizes or orientations, repeated
        positions, uneven slice spacing, or any slice that cannot be read.
    """
    with _quiet():
        return _read_dicom_series(Path(folder), window, max_pixels)


def _read_dicom_series(folder: Path, window: WindowSpec, max_pixels: int) -> MedicalImage:
    if not folder.is_dir():
        raise ImageLoadError(f"{folder}: not a folder (a DICOM series is a folder of files)")
    files = _series_files(folder)
    if not files:
        raise ImageLoadError(
            f"{folder}: no DICOM files (files with the 'DICM' marker or a .dcm suffix)"
        )
    if len(files) == 1:
        return read_dicom(files[0], window=window, max_pixels=max_pixels)
    slices: list[np.ndarray] = []
    datasets: list[Any] = []
    total = 0
    for file in files:
        ds = _read_dataset(file)
        values, photometric, frames = _decode(file, ds, max_pixels)
        if frames != 1 or photometric == "RGB":
            raise ImageLoadError(
                f"{folder}: {file.name} is a {'colour' if photometric == 'RGB' else 'multi-frame'}"
                " image; a series folder holds single-frame grayscale slices"
            )
        total += values.size
        if total > max_pixels:
            raise ImageLoadError(
                f"{folder}: the series has more than {max_pixels:,} voxels (raise the limit "
                "with --max-pixels if the files are trusted)"
            )
        slices.append(values)
        del ds.PixelData  # the decoded copy is in `slices`
        datasets.append(ds)
    _check_same_series(folder, files, datasets, slices)
    planes = [_plane(ds) for ds in datasets]
    if all(p is not None for p in planes):
        orientation, in_plane = planes[0][1], planes[0][2]  # type: ignore[index]
        for file, plane in zip(files, planes):
            if not np.allclose(plane[1], orientation, atol=1e-4):  # type: ignore[index]
                raise ImageLoadError(f"{folder}: {file.name} has another slice orientation")
            if not np.allclose(plane[2], in_plane, rtol=1e-4):  # type: ignore[index]
                raise ImageLoadError(f"{folder}: {file.name} has another pixel spacing")
        positions = np.stack([p[0] for p in planes])  # type: ignore[index]
        order, affine, slice_spacing = _stack_affine(folder, positions, orientation, in_plane)
        spacing: tuple[float, ...] | None = (slice_spacing, float(in_plane[0]), float(in_plane[1]))
        slice_order = "position along the slice normal"
    else:
        numbers = [_instance_number(ds) for ds in datasets]
        order = np.argsort(numbers, kind="stable")
        affine = None
        in_plane_spacing, _ = _pixel_spacing(datasets[0])
        spacing = (
            None if in_plane_spacing is None else (_slice_thickness(datasets[0]), *in_plane_spacing)
        )
        slice_order = "InstanceNumber (no ImagePositionPatient)"
    volume = np.stack([slices[i] for i in order])
    middle = datasets[int(order[len(order) // 2])]
    photometric = str(middle.PhotometricInterpretation).strip().upper()
    file_window = window_from_dicom(middle)
    metadata = safe_dicom_metadata(middle)
    metadata.update(slices=len(files), slice_order=slice_order)
    return MedicalImage(
        array=volume,
        source=str(folder),
        kind="dicom-series",
        spacing=spacing,
        affine=affine,
        photometric=photometric,
        units=_units(middle),
        window=_choose_window(folder, window, volume, file_window, photometric, middle),
        file_window=file_window,
        metadata=metadata,
        is_volume=True,
    )


def _instance_number(ds: Any) -> float:
    try:
        return float(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return float("inf")


def _check_same_series(
    folder: Path, files: list[Path], datasets: list[Any], slices: list[np.ndarray]
) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        numbers = sorted({str(ds.get("SeriesNumber", "?")) for ds in datasets})
        raise ImageLoadError(
            f"{folder}: holds {len(series)} DICOM series (SeriesNumber {', '.join(numbers)}); "
            "give one folder per series"
        )
    shape = slices[0].shape
    for file, values in zip(files, slices):
        if values.shape != shape:
            raise ImageLoadError(
                f"{folder}: {file.name} is {values.shape[1]}x{values.shape[0]}, the first slice "
                f"{shape[1]}x{shape[0]}; a series needs one slice size"
            )
    photometric = {str(ds.PhotometricInterpretation).strip().upper() for ds in datasets}
    if len(photometric) > 1:
        raise ImageLoadError(
            f"{folder}: slices mix photometric interpretations ({', '.join(sorted(photometric))})"
        )
