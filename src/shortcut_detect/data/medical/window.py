"""Intensity windows: which range of stored values becomes black..white on screen.

A medical image holds far more intensity levels than a display (or an 8-bit model input):
a CT slice spans about -1000..3000 Hounsfield units. A :class:`Window` says which range is
mapped to [0, 1]; everything outside is clipped, so the window chosen for an audit is part of
its result (a shortcut can hide in intensities outside it) and :meth:`Window.describe` is
written next to it.

Windows come from the user (``"CENTER,WIDTH"``), from the file (DICOM *Window Center/Width*
or a VOI LUT, see :func:`window_from_dicom`) or from the data (:func:`auto_window`:
percentiles 0.5 and 99.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np

__all__ = [
    "AUTO_PERCENTILES",
    "Window",
    "WindowSpec",
    "apply_window",
    "auto_window",
    "describe_window_spec",
    "parse_window",
    "percentile_window",
    "resolve_window",
    "to_8bit",
    "window_from_dicom",
]

AUTO_PERCENTILES = (0.5, 99.5)
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID", "LUT")
# Percentiles of very large volumes are taken on an evenly strided sample of this many values.
_PERCENTILE_SAMPLE = 2_000_000

# What a caller may pass as a window: a Window, "auto" (or None), "full" or "CENTER,WIDTH".
WindowSpec: TypeAlias = "Window | str | None"


@dataclass(frozen=True)
class Window:
    """A mapping of stored intensities to [0, 1].

    Parameters
    ----------
    center, width:
        Centre and width of the window in the image's units (Hounsfield units for CT).
    function:
        ``"LINEAR_EXACT"`` maps ``[center - width/2, center + width/2]`` linearly to [0, 1]
        (used for user, percentile and full-range windows); ``"LINEAR"`` and ``"SIGMOID"``
        are the DICOM VOI LUT functions (PS3.3 C.11.2.1.2), used for windows read from a
        DICOM file; ``"LUT"`` is a DICOM VOI LUT table (``lut`` holds it).
    source:
        Where the window came from, e.g. ``"file (WindowCenter/WindowWidth)"``,
        ``"percentiles 0.5-99.5"``, ``"user"``.
    lut, lut_first, lut_bits:
        For ``function="LUT"``: the table, the first stored value it maps, and the bit depth
        of its output (``2**lut_bits - 1`` is white).
    """

    center: float
    width: float
    function: str = "LINEAR_EXACT"
    source: str = "user"
    lut: np.ndarray | None = field(default=None, compare=False, repr=False)
    lut_first: int = 0
    lut_bits: int = 16

    def __post_init__(self) -> None:
        if self.function not in _FUNCTIONS:
            raise ValueError(
                f"unknown window function {self.function!r}; expected one of "
                f"{', '.join(_FUNCTIONS)}"
            )
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(f"a window needs a finite centre and width, got {self.label()}")
        minimum = 1.0 if self.function == "LINEAR" else 0.0
        if self.width < minimum or (minimum == 0.0 and self.width <= 0):
            raise ValueError(
                f"a window width must be {'at least 1' if minimum else 'positive'} "
                f"({self.function}), got {self.width:g}"
            )
        if self.function == "LUT" and (self.lut is None or self.lut.ndim != 1 or not self.lut.size):
            raise ValueError("a LUT window needs a non-empty 1-D table")

    @classmethod
    def from_range(cls, low: float, high: float, *, source: str = "user") -> Window:
        """The window that maps ``low`` to 0 and ``high`` to 1 (``high > low``)."""
        if not high > low:
            raise ValueError(f"a window range needs high > low, got {low:g}..{high:g}")
        return cls(center=(low + high) / 2.0, width=high - low, source=source)

    @property
    def low(self) -> float:
        """The highest value shown as black (below it everything is black)."""
        if self.function == "LINEAR":
            return self.center - 0.5 - (self.width - 1.0) / 2.0
        if self.function == "LUT":
            return float(self.lut_first)
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        """The lowest value shown as white (above it everything is white)."""
        if self.function == "LINEAR":
            return self.center - 0.5 + (self.width - 1.0) / 2.0
        if self.function == "LUT":
            return float(self.lut_first + self.lut.size - 1)  # type: ignore[union-attr]
        return self.center + self.width / 2.0

    def label(self) -> str:
        """Short text, e.g. ``"C=40 W=400"``."""
        return f"C={self.center:g} W={self.width:g}"

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description for ``summary.json`` and reports."""
        description: dict[str, Any] = {
            "center": float(self.center),
            "width": float(self.width),
            "low": float(self.low),
            "high": float(self.high),
            "function": self.function,
            "source": self.source,
        }
        if self.function == "LUT":
            description["lut_entries"] = int(self.lut.size)  # type: ignore[union-attr]
            description["lut_bits"] = int(self.lut_bits)
        return description


def parse_window(text: str) -> Window | Literal["auto", "full"]:
    """Parse a ``--window`` value: ``"auto"``, ``"full"`` or ``"CENTER,WIDTH"``.

    ``"auto"`` means the file's own window, else percentiles 0.5-99.5 of the image;
    ``"full"`` means the image's whole min..max range.

    Raises
    ------
    ValueError
        Anything else, with the accepted forms.
    """
    value = str(text).strip().lower()
    if value in ("auto", "full"):
        return value  # type: ignore[return-value]
    parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--window takes 'auto', 'full' or 'CENTER,WIDTH' (e.g. 40,400 for a CT soft-tissue "
            f"window), got {text!r}"
        ) from None
    try:
        return Window(center, width, source="user")
    except ValueError as error:
        raise ValueError(f"--window {text!r}: {error}") from None


def percentile_window(
    array: np.ndarray, percentiles: tuple[float, float] = AUTO_PERCENTILES
) -> Window:
    """The window spanning two percentiles of the finite values of ``array``.

    Arrays above two million values are sampled with an even stride (the percentiles of a
    medical volume barely move; sorting all of it would dominate the reading time).

    Raises
    ------
    ValueError
        An array without any finite value.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: -(-flat.size // _PERCENTILE_SAMPLE)]
    if flat.dtype.kind == "f":
        finite = np.isfinite(flat)
        if not finite.all():
            flat = flat[finite]
    if flat.size == 0:
        raise ValueError("the image has no finite values to choose a window from")
    low, high = (float(v) for v in np.percentile(flat, percentiles))
    source = f"percentiles {percentiles[0]:g}-{percentiles[1]:g}"
    if high <= low:
        # A flat image: any positive width shows it as mid-grey.
        return Window(center=low, width=1.0, source=f"{source} (constant image)")
    return Window.from_range(low, high, source=source)


def _full_window(array: np.ndarray) -> Window:
    flat = np.asarray(array)
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise ValueError("the image has no finite values to choose a window from")
    low, high = float(flat.min()), float(flat.max())
    if high <= low:
        return Window(center=low, width=1.0, source="full range (constant image)")
    return Window.from_range(low, high, source="full range")


def auto_window(array: np.ndarray, file_window: Window | None = None) -> Window:
    """The ``--window auto`` choice: the file's window if it has one, else percentiles
    0.5-99.5 of ``array``."""
    if file_window is not None:
        return file_window
    return percentile_window(array)


def resolve_window(
    spec: WindowSpec, array: np.ndarray, file_window: Window | None = None
) -> Window:
    """The window a spec means for one image (``None`` and ``"auto"`` are the same)."""
    if isinstance(spec, Window):
        return spec
    if spec is None:
        spec = "auto"
    if isinstance(spec, str):
        parsed = parse_window(spec)
        if isinstance(parsed, Window):
            return parsed
        if parsed == "full":
            return _full_window(array)
        return auto_window(array, file_window)
    raise TypeError(f"a window is a Window, 'auto', 'full' or 'CENTER,WIDTH', got {spec!r}")


def describe_window_spec(spec: str | None) -> dict[str, Any]:
    """What a run's ``--window`` value means, for ``summary.json`` and the report.

    ``None`` is the default (``"auto"`` for DICOM and NIfTI, the fixed 16-bit to 8-bit
    scaling for other 16-bit images); a ``CENTER,WIDTH`` value gets its range.
    """
    if spec is None:
        return {
            "spec": "default",
            "text": "DICOM/NIfTI: the file's own window (VOI LUT or Window Center/Width), else "
            "percentiles 0.5-99.5 of each image; 16-bit PNG/TIFF: full 16-bit range",
        }
    parsed = parse_window(spec)
    if parsed == "auto":
        return {
            "spec": "auto",
            "text": "the file's own window (VOI LUT or Window Center/Width), else percentiles "
            "0.5-99.5 of each image",
        }
    if parsed == "full":
        return {"spec": "full", "text": "each image's full min..max range"}
    assert isinstance(parsed, Window)
    return {
        "spec": spec,
        "text": f"{parsed.label()}: values {parsed.low:g}..{parsed.high:g} shown as black..white, "
        "values outside clipped",
        **parsed.describe(),
    }


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Map ``array`` through ``window``: a new float32 array with values in [0, 1].

    NaN becomes 0 (black).
    """
    values = np.asarray(array)
    if window.function == "LUT":
        lut = window.lut
        assert lut is not None  # checked by Window
        if values.dtype.kind == "f":
            index = np.nan_to_num(np.rint(values - window.lut_first), nan=0.0)
        else:
            index = values.astype(np.int64) - window.lut_first
        index = np.clip(index, 0, lut.size - 1).astype(np.intp)
        scale = np.float32(1.0 / (2**window.lut_bits - 1))
        out = lut.astype(np.float32)[index] * scale
        return np.clip(out, 0.0, 1.0, out=out)
    if window.function == "SIGMOID":
        out = np.subtract(values, window.center, dtype=np.float32)
        out *= np.float32(-4.0 / window.width)
        np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)
    else:
        low, high = window.low, window.high
        if high <= low:  # DICOM LINEAR with width 1: a threshold
            out = np.greater(values, low).astype(np.float32)
        else:
            out = np.subtract(values, np.float32(low), dtype=np.float32)
            out *= np.float32(1.0 / (high - low))
            np.clip(out, 0.0, 1.0, out=out)
    if values.dtype.kind == "f":
        np.nan_to_num(out, copy=False, nan=0.0)
    return out


def to_8bit(array: np.ndarray, window: Window) -> np.ndarray:
    """``array`` through ``window`` as uint8 (0..255), e.g. for a 16-bit PNG or TIFF.

    The replacement for a fixed full-range squeeze: ``Image.fromarray(to_8bit(a, w), "L")``.
    """
    out = apply_window(array, window)
    out *= 255.0
    out += 0.5
    return out.astype(np.uint8)


def _first_number(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) DICOM number, or ``None``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _lut_window(item: Any, little_endian: bool) -> Window | None:
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3 or "LUTData" not in item:
        return None
    entries = int(descriptor[0]) or 2**16
    first, bits = int(descriptor[1]), int(descriptor[2])
    data = item["LUTData"]
    if data.VR == "OW" or isinstance(data.value, (bytes, bytearray)):
        table = np.frombuffer(bytes(data.value), dtype="<u2" if little_endian else ">u2")
    else:
        raw = data.value
        table = np.asarray([raw] if isinstance(raw, (int, float)) else list(raw), dtype=np.float64)
    table = table[:entries].astype(np.float64)
    if table.size == 0 or not 8 <= bits <= 16:
        return None
    return Window(
        center=first + (table.size - 1) / 2.0,
        width=float(max(table.size, 1)),
        function="LUT",
        source="file (VOI LUT)",
        lut=table,
        lut_first=first,
        lut_bits=bits,
    )


def _center_width_window(item: Any) -> Window | None:
    center = _first_number(item.get("WindowCenter"))
    width = _first_number(item.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(item.get("VOILUTFunction", "") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    try:
        return Window(center, width, function=function, source="file (WindowCenter/WindowWidth)")
    except ValueError:  # a width the standard does not allow: ignore the file's window
        return None


def frame_groups(ds: Any, frame: int) -> list[Any]:
    """Functional group items that apply to one frame of an enhanced multi-frame DICOM file
    (the frame's own, then the shared ones)."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 0 <= frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def window_from_dicom(ds: Any, frame: int = 0) -> Window | None:
    """The display window stored in a DICOM dataset, or ``None`` when it has none.

    A VOI LUT (*VOI LUT Sequence*) wins over *Window Center/Width*, as in pydicom's
    ``apply_voi_lut``; the first of several alternative windows is used. Enhanced multi-frame
    files are read from the frame's (or the shared) *Frame VOI LUT Sequence*. Windows are in
    the units after the modality rescale (Hounsfield units for CT), like the array of a
    :class:`~shortcut_detect.data.medical.MedicalImage`.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    little_endian = True if syntax is None else str(syntax) != "1.2.840.10008.1.2.2"
    for item in ds.get("VOILUTSequence") or []:
        window = _lut_window(item, little_endian)
        if window is not None:
            return window
    window = _center_width_window(ds)
    if window is not None:
        return window
    for group in frame_groups(ds, frame):
        for item in group.get("FrameVOILUTSequence") or []:
            window = _center_width_window(item)
            if window is not None:
                return window
    return None
