"""Image sets on disk: an ImageFolder-style directory or a CSV/Parquet manifest.

* :func:`load_image` opens one file safely (size limit before decoding, truncated and
  non-image files raise :class:`ImageLoadError`, palette/alpha/16-bit modes handled); DICOM
  and NIfTI files, and slices of volumes (``scan.nii.gz#axial=12``), go to the medical
  readers (:mod:`shortcut_detect.data.medical`) with an intensity window.
* :func:`read_image_set` lists the samples (:class:`ImageRecord`) of a folder or manifest,
  with labels, optional groups and optional region masks (a binary image or a box).
* :class:`ImageRecordDataset` decodes them in DataLoader workers; a bad file becomes a
  sample with ``ok=False`` and its error, so a run counts it instead of crashing.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shortcut_detect.data.png_fast import PlainPng, read_plain_png
from shortcut_detect.data.transforms import Preprocessing

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MEDICAL_EXTENSIONS",
    "SLICE_PLANES",
    "ImageLoadError",
    "ImageRecord",
    "ImageRecordDataset",
    "ImageSet",
    "ManifestError",
    "collate_samples",
    "common_image_size",
    "expand_slices",
    "is_medical_name",
    "load_image",
    "load_volume",
    "make_loader",
    "mask_from_text",
    "mask_text",
    "parse_box",
    "read_image_set",
    "series_samples",
    "slice_count",
    "slice_reference",
    "volume_region",
    "volume_slices",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 178_956_970  # twice Pillow's warning level, its own error level
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
# The suffixes the medical readers take (data.medical.MEDICAL_SUFFIXES, repeated here because
# that package imports this module; a test checks they agree).
MEDICAL_EXTENSIONS = (".dcm", ".dicom", ".dic", ".nii", ".nii.gz")
SLICE_PLANES = ("axial", "coronal", "sagittal")
_SLICE_PATTERN = re.compile(r"^(?P<path>.+)#(?P<plane>axial|coronal|sagittal)=(?P<index>\d+)$")


class ImageLoadError(ValueError):
    """A file that could not be read as an image (the message says why)."""


class ManifestError(ValueError):
    """A manifest or image folder that cannot be used as it is (the message says how to fix)."""


# -- one image ------------------------------------------------------------------------------


def _to_standard_mode(image: Any, window: Any = None) -> Any:
    """``RGB`` for colour images, ``L`` for grayscale ones (8 bits).

    ``window`` (a medical ``WindowSpec``: ``"auto"``, ``"full"``, ``"CENTER,WIDTH"`` or a
    ``Window``) maps 16-bit and float images to 8 bits; ``None`` keeps the fixed scaling.
    """
    from PIL import Image

    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode in ("1", "LA"):
        return image.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if window is not None:
            # Imported here: the medical package imports this module.
            from shortcut_detect.data.medical.window import resolve_window, to_8bit

            return Image.fromarray(to_8bit(array, resolve_window(window, array)), mode="L")
        if mode == "F":
            low, high = float(np.nanmin(array)), float(np.nanmax(array))
            scaled = (array - low) / (high - low) * 255.0 if high > low else array * 0.0
        else:
            # 16-bit data (X-rays, microscopy): map the full 16-bit range to 8 bits, the
            # same fixed scaling for every image so brightness stays comparable.
            scaled = np.clip(array, 0, 65535) / 257.0
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if mode == "P":
        # Palette images with transparency must pass through RGBA (Pillow warns otherwise).
        return image.convert("RGBA").convert("RGB")
    # RGBA, CMYK, YCbCr, LAB, HSV, ...: alpha is dropped as torchvision's default loader does.
    return image.convert("RGB")


def is_medical_name(path: str | os.PathLike[str]) -> bool:
    """Whether the name ends in a DICOM or NIfTI suffix (see :data:`MEDICAL_EXTENSIONS`)."""
    return str(path).lower().endswith(MEDICAL_EXTENSIONS)


def slice_reference(path: str | os.PathLike[str]) -> tuple[str, str, int] | None:
    """``(file, plane, index)`` of a slice reference ``FILE#PLANE=INDEX``, else ``None``.

    A path naming an existing file is never a slice reference (file names may hold ``#``).
    """
    text = os.fspath(path)
    match = _SLICE_PATTERN.match(text)
    if match is None or Path(text).exists():
        return None
    return match["path"], match["plane"], int(match["index"])


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    window: Any = None,
) -> Any:
    """Open an image file as a PIL image in ``RGB`` or ``L`` (grayscale) mode.

    Parameters
    ----------
    path:
        The file: PNG, JPEG, TIFF... (anything Pillow reads), a DICOM file (``.dcm`` or the
        ``DICM`` marker), a 2-D NIfTI file, or one slice of a volume as
        ``FILE#PLANE=INDEX`` (plane ``axial``, ``coronal`` or ``sagittal``, see
        :func:`read_image_set`'s ``slices``).
    max_pixels:
        Refuse images with more pixels than this before decoding them (a guard against
        decompression bombs and accidental giant scans).
    window:
        Intensity window for DICOM, NIfTI and 16-bit images: ``"auto"`` (the file's own
        window, else percentiles 0.5-99.5), ``"full"`` (min..max), ``"CENTER,WIDTH"`` or a
        :class:`~shortcut_detect.data.medical.Window`. ``None`` means ``"auto"`` for
        medical files and the fixed 16-bit to 8-bit scaling for other 16-bit images.

    Raises
    ------
    ImageLoadError
        Missing file, not an image, truncated or corrupt data, too many pixels, or a volume
        given where a 2-D image is needed.
    MedicalDependencyError
        A DICOM/NIfTI file without pydicom/nibabel installed (the message names the extra).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    reference = slice_reference(path)
    if reference is not None:
        return _load_slice(*reference, window=window, max_pixels=max_pixels)
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    if is_medical_name(path) or _has_dicom_marker(path):
        return _load_medical(path, window=window, max_pixels=max_pixels)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        # Asked explicitly for a higher limit than Pillow's own refusal level.
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{path}: {width}x{height} = {width * height:,} pixels is above the "
                        f"limit of {max_pixels:,} (raise it with --max-pixels if the file is "
                        "trusted)"
                    )
                image.load()
                return _to_standard_mode(image, window)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            f"{path}: {error} (raise the limit with --max-pixels if the file is trusted)"
        ) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageLoadError(f"{path}: corrupt or truncated image ({reason})") from error


def _has_dicom_marker(path: Path) -> bool:
    """A suffix-less file with the DICOM ``DICM`` marker at byte 128 (PNG/JPEG... never)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _load_medical(path: Path, *, window: Any, max_pixels: int) -> Any:
    # Imported here: the medical package imports this module (errors, size limit).
    from shortcut_detect.data.medical import read_medical

    image = read_medical(path, window="auto" if window is None else window, max_pixels=max_pixels)
    try:
        return image.to_pil()
    except ValueError as error:
        raise ImageLoadError(str(error)) from error


# The last volume cut into slices (per process): consecutive slices of a volume share it.
_SLICE_CACHE: dict[tuple[Any, ...], Any] = {}


def volume_slices(
    path: str | os.PathLike[str],
    plane: str,
    *,
    window: Any = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Any:
    """A volume file (NIfTI, multi-frame DICOM with positions, DICOM series folder) cut into
    ``plane`` slices: a :class:`~shortcut_detect.data.medical.VolumeSlices`, kept for the next
    call with the same file, plane and window.

    Raises
    ------
    ImageLoadError
        Unreadable file, or no 3-D geometry to cut slices from.
    """
    from shortcut_detect.data.medical import nifti_slices, read_medical

    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as error:
        raise ImageLoadError(f"{path}: no such file") from error
    key = (str(path), stamp, plane, repr(window), max_pixels)
    cached = _SLICE_CACHE.get(key)
    if cached is not None:
        return cached
    volume = read_medical(path, window="auto" if window is None else window, max_pixels=max_pixels)
    try:
        slices = nifti_slices(volume, plane)
    except ValueError as error:
        raise ImageLoadError(str(error)) from error
    _SLICE_CACHE.clear()
    _SLICE_CACHE[key] = slices
    return slices


def _load_slice(file: str, plane: str, index: int, *, window: Any, max_pixels: int) -> Any:
    slices = volume_slices(file, plane, window=window, max_pixels=max_pixels)
    if index >= len(slices):
        raise ImageLoadError(
            f"{file}: no {plane} slice {index} (the volume has {len(slices)} {plane} slices)"
        )
    return slices.image(index).to_pil()


def slice_count(path: str | os.PathLike[str], plane: str) -> int | None:
    """How many ``plane`` slices a volume file has, from its header (``None``: not a volume
    or unreadable; the run reports the file as it is)."""
    from shortcut_detect.data.medical import PLANES, require
    from shortcut_detect.data.medical.image import reorientation

    path = os.fspath(path)
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    nibabel = require("nibabel", "reading NIfTI files")
    try:
        image = nibabel.load(path)
        shape = tuple(image.shape)
        if len(shape) < 3 or any(n > 1 for n in shape[3:]):
            return None
        perm, _ = reorientation(np.asarray(image.affine), PLANES[plane])
    except Exception:  # unreadable here means an error row when the run reads it
        return None
    return int(shape[perm[0]])


def expand_slices(image_set: ImageSet, plane: str) -> ImageSet:
    """Replace each 3-D NIfTI volume of ``image_set`` by one record per ``plane`` slice
    (``FILE#PLANE=INDEX``, same label, group and mask); other files stay as they are."""
    if plane not in SLICE_PLANES:
        raise ValueError(f"--slices takes {', '.join(SLICE_PLANES)}, got {plane!r}")
    records: list[ImageRecord] = []
    volumes = 0
    for record in image_set.records:
        count = slice_count(record.path, plane)
        if count is None:
            records.append(replace(record, index=len(records)))
            continue
        volumes += 1
        for number in range(count):
            records.append(
                replace(
                    record,
                    sample_id=f"{record.sample_id}#{plane}={number}",
                    index=len(records),
                    path=f"{record.path}#{plane}={number}",
                )
            )
    notes = list(image_set.notes)
    if volumes:
        notes.append(f"{volumes} volume(s) read as {plane} slices: {len(records)} samples in all")
    return replace(image_set, records=records, notes=notes)


def series_samples(image_set: ImageSet) -> ImageSet:
    """One record per DICOM series: the DICOM files of a folder become one sample whose path
    is the folder (read with :func:`~shortcut_detect.data.medical.read_dicom_series`); other
    files stay as they are. Manifest sets are returned unchanged (they name series folders)."""
    if image_set.kind != "folder":
        return image_set
    records: list[ImageRecord] = []
    series: dict[str, int] = {}
    root = Path(image_set.source)
    for record in image_set.records:
        path = Path(record.path)
        if path.name.lower().endswith((".nii", ".nii.gz")) or not (
            is_medical_name(path) or _has_dicom_marker(path)
        ):
            records.append(replace(record, index=len(records)))
            continue
        folder = str(path.parent)
        if folder in series:
            continue
        series[folder] = len(records)
        sample_id = _relative(path.parent.resolve(), root.resolve())
        records.append(replace(record, sample_id=sample_id, path=folder, index=len(records)))
    notes = list(image_set.notes)
    if series:
        notes.append(f"{len(series)} DICOM series (one folder each) read as one volume each")
    return replace(image_set, records=records, notes=notes)


def load_volume(
    path: str | os.PathLike[str], *, window: Any = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Any:
    """A NIfTI volume, DICOM series folder or multi-frame DICOM volume for a 3-D model: a
    :class:`~shortcut_detect.data.medical.MedicalImage` in the closest RAS+ voxel order
    (``array[x, y, z]``, as MONAI's ``Orientation("RAS")``), so both formats give a model
    the same layout.

    Raises
    ------
    ImageLoadError
        Unreadable, or not a 3-D volume with geometry (a 2-D image needs a 2-D model).
    """
    from shortcut_detect.data.medical import read_medical

    image = read_medical(path, window="auto" if window is None else window, max_pixels=max_pixels)
    if not image.is_volume or len(image.spatial_shape) != 3 or image.affine is None:
        raise ImageLoadError(
            f"{path}: {image.kind} of shape {image.spatial_shape} is not a 3-D volume with "
            "slice positions; a 3-D model takes NIfTI volumes and DICOM series folders"
        )
    return image.canonical()


def _voxel_axes(kind: str) -> tuple[int, int, int]:
    """The array axes of a medical image's voxel x, y, z (a box's coordinates): NIfTI's
    ``(i, j, k)``, DICOM's ``(column, row, slice)`` of its ``(slice, row, column)`` array."""
    return (0, 1, 2) if kind == "nifti" else (2, 1, 0)


def volume_region(
    mask: tuple[str, Any], path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A record's region of a volume as bool in the canonical voxel order of
    :func:`load_volume`: a box ``x0,y0,z0,x1,y1,z1`` in the source's voxel indices (NIfTI
    ``i, j, k``; DICOM column, row, slice; far corners exclusive) or a NIfTI mask file of the
    volume's shape (non-zero = region).

    Raises
    ------
    ImageLoadError
        A 2-D box, a mask that is not a volume of the image's shape.
    """
    from shortcut_detect.data.medical import read_medical

    image = read_medical(path, window="full", max_pixels=max_pixels)
    kind, value = mask
    if kind == "box":
        if len(value) != 6:
            raise ImageLoadError(
                f"box {','.join(f'{v:g}' for v in value)} has 2-D corners; a volume's box is "
                "x0,y0,z0,x1,y1,z1 in voxels"
            )
        region = np.zeros(image.spatial_shape, dtype=np.float32)
        slices: list[slice] = [slice(None)] * 3
        for coordinate, axis in enumerate(_voxel_axes(image.kind)):
            low, high = value[coordinate], value[coordinate + 3]
            slices[axis] = slice(max(0, math.floor(low)), max(0, math.ceil(high)))
        region[tuple(slices)] = 1.0
        source = replace(image, array=region, photometric="MONOCHROME2", is_volume=True)
    else:
        source = read_medical(value, window="full", max_pixels=max_pixels)
        if source.spatial_shape != image.spatial_shape or source.affine is None:
            raise ImageLoadError(
                f"mask {value}: shape {source.spatial_shape} differs from the volume's "
                f"{image.spatial_shape}; a volume's mask is a NIfTI file on the same voxels"
            )
        source = replace(
            source, array=(source.array > 0).astype(np.float32), photometric="MONOCHROME2"
        )
    return source.canonical().array > 0.5


# -- records --------------------------------------------------------------------------------


def common_image_size(paths: Iterable[str | os.PathLike[str]]) -> tuple[int, int]:
    """The ``(height, width)`` all the images share, read from the file headers only.

    For models fed each image at its own size: a batch needs one size, so mixed sizes are
    refused here, before a long run would stop on them. Unreadable files are skipped (they
    are reported when the run reads them).

    Raises
    ------
    ImageLoadError
        When the images differ in size (naming two of them) or none could be read.
    """
    from PIL import Image

    found: tuple[int, int] | None = None
    first = ""
    for path in paths:
        try:
            if slice_reference(path) is not None or is_medical_name(path):
                # Medical files have no header Pillow reads: decode them (a one-off cost).
                width, height = load_image(path).size
            else:
                with Image.open(path) as image:
                    width, height = image.size
        except (OSError, SyntaxError, ValueError, ImportError):
            continue
        if found is None:
            found, first = (height, width), str(path)
        elif (height, width) != found:
            raise ImageLoadError(
                f"The images differ in size ({first} is {found[1]}x{found[0]}, {path} is "
                f"{width}x{height}) and no resize= was given to bring them to one size; "
                "add resize=N with the model's input size"
            )
    if found is None:
        raise ImageLoadError("None of the images could be read to find their size")
    return found


@dataclass(frozen=True)
class ImageRecord:
    """One sample of an image set.

    Attributes
    ----------
    sample_id:
        Stable id (the path relative to the data root; ``#2``, ``#3``... for repeats).
    index:
        Position in the image set.
    path:
        Absolute path of the image file.
    label:
        Class index, or ``-1`` when the set has no labels.
    label_name:
        The label as written in the data (folder or manifest value).
    group:
        Group value (e.g. scanner, site, marker present), ``None`` when absent.
    mask:
        Region of interest: ``("box", (x0, y0, x1, y1))`` in pixels (``x1``, ``y1``
        exclusive), ``("file", path)`` of a binary image, or ``None``.
    """

    sample_id: str
    index: int
    path: str
    label: int
    label_name: str
    group: str | None = None
    mask: tuple[str, Any] | None = None


@dataclass
class ImageSet:
    """The samples of a folder or manifest and how their labels map to classes."""

    records: list[ImageRecord]
    source: str
    kind: str  # "folder" or "manifest"
    label_names: list[str] = field(default_factory=list)
    has_groups: bool = False
    has_masks: bool = False
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """Hash of ids, labels, groups and masks: two runs over the same data agree on it."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(
                f"{record.sample_id}\t{record.label}\t{record.group}\t{record.mask}\n".encode()
            )
        return digest.hexdigest()[:16]

    def shard(self, shard_index: int, num_shards: int) -> list[ImageRecord]:
        """The records of one shard (every ``num_shards``-th, starting at ``shard_index``)."""
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(
                f"--shard-index must be in 0..{num_shards - 1} for --num-shards {num_shards}, "
                f"got {shard_index}"
            )
        return self.records[shard_index::num_shards]


def parse_box(text: str) -> tuple[float, ...]:
    """``"x0,y0,x1,y1"`` (an image) or ``"x0,y0,z0,x1,y1,z1"`` (a volume) -> four or six
    floats (``ValueError`` with the reason otherwise)."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    if len(parts) not in (4, 6):
        raise ValueError(f"a box is 'x0,y0,x1,y1' (or 'x0,y0,z0,x1,y1,z1' in 3-D), got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"a box is numbers 'x0,y0,x1,y1' (or 'x0,y0,z0,x1,y1,z1'), got {text!r}"
        ) from None
    half = len(values) // 2
    if not all(math.isfinite(v) for v in values) or any(
        values[half + axis] <= values[axis] for axis in range(half)
    ):
        names = "x1 > x0, y1 > y0" + (" and z1 > z0" if half == 3 else "")
        raise ValueError(f"a box needs {names}, got {text!r}")
    return values


def _unique_ids(relative_paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for rel in relative_paths:
        count = seen.get(rel, 0) + 1
        seen[rel] = count
        ids.append(rel if count == 1 else f"{rel}#{count}")
    return ids


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_folder(root: Path, class_names: Sequence[str] | None) -> ImageSet:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ManifestError(
            f"{root} has no class sub-folders. An image folder holds one folder per class "
            "(root/cat/1.png, root/dog/2.png); otherwise give a CSV/Parquet manifest with "
            "path,label columns."
        )
    mapping = _label_mapping(classes, class_names, str(root))
    paths: list[tuple[Path, str]] = []
    for name in classes:
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                if filename.lower().endswith(IMAGE_EXTENSIONS) or is_medical_name(filename):
                    paths.append((Path(dirpath) / filename, name))
    if not paths:
        raise ManifestError(
            f"{root} has class folders ({', '.join(classes[:5])}) but no image files "
            f"({', '.join(IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)})"
        )
    ids = _unique_ids([_relative(p, root) for p, _ in paths])
    records = [
        ImageRecord(
            sample_id=sample_id,
            index=index,
            path=str(path.resolve()),
            label=mapping[name],
            label_name=name,
        )
        for index, (sample_id, (path, name)) in enumerate(zip(ids, paths))
    ]
    return ImageSet(records, str(root), "folder", label_names=classes)


def _label_mapping(
    values: Sequence[str], class_names: Sequence[str] | None, source: str
) -> dict[str, int]:
    """Map label strings to class indices.

    Class names from the model win; integers are indices; otherwise sorted order (the
    torchvision ImageFolder convention).
    """
    unique = sorted(set(values))
    if class_names:
        names = [str(n) for n in class_names]
        if set(unique) <= set(names):
            return {value: names.index(value) for value in unique}
        if all(_is_int(v) for v in unique):
            mapping = {value: int(value) for value in unique}
            bad = [v for v, i in mapping.items() if not 0 <= i < len(names)]
            if bad:
                raise ManifestError(
                    f"{source}: label(s) {', '.join(bad[:5])} are out of range for a model with "
                    f"{len(names)} classes"
                )
            return mapping
        missing = [v for v in unique if v not in names]
        raise ManifestError(
            f"{source}: label(s) {', '.join(missing[:5])} are not among the model's class names "
            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}). Use the model's class "
            "names or class indices as labels, or pass --classes FILE with the names in the "
            "model's output order."
        )
    if all(_is_int(v) for v in unique):
        return {value: int(value) for value in unique}
    return {value: index for index, value in enumerate(unique)}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _read_table(path: Path) -> Any:
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table.cast(pa.schema([pa.field(f.name, pa.string()) for f in table.schema]))
        import pyarrow.csv as pacsv

        with open(path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline()
        delimiter = "\t" if suffix == ".tsv" or ("\t" in header and "," not in header) else ","
        names = [n.strip() for n in header.rstrip("\r\n").split(delimiter)]
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                # Only an empty cell is missing: "NA", "None" or "nan" are labels and names.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, UnicodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ManifestError(f"Cannot read manifest {path}: {first}") from error


def _read_manifest(
    path: Path,
    class_names: Sequence[str] | None,
    *,
    path_column: str,
    label_column: str,
    group_column: str | None,
    mask_column: str | None,
) -> ImageSet:
    table = _read_table(path)
    columns = list(table.column_names)
    wanted = [(path_column, "--path-column"), (label_column, "--label-column")]
    if group_column:
        wanted.append((group_column, "--group-column"))
    if mask_column:
        wanted.append((mask_column, "--mask-column"))
    missing = [(name, option) for name, option in wanted if name not in columns]
    if missing:
        names = ", ".join(repr(name) for name, _ in missing)
        options = ", ".join(option for _, option in missing)
        raise ManifestError(
            f"Manifest {path} has no column {names} (its columns: {', '.join(columns) or 'none'}). "
            f"Rename the columns or point {options} at the right ones."
        )
    if table.num_rows == 0:
        raise ManifestError(f"Manifest {path} has no rows")
    data = {name: table.column(name).to_pylist() for name, _ in wanted}
    root = path.parent
    rel_paths: list[str] = []
    abs_paths: list[str] = []
    problems: list[str] = []
    for row, value in enumerate(data[path_column]):
        if value is None or not str(value).strip():
            problems.append(f"row {row + 2}: empty {path_column}")
            continue
        file_path = Path(str(value).strip()).expanduser()
        if not file_path.is_absolute():
            file_path = root / file_path
        rel_paths.append(str(value).strip())
        abs_paths.append(str(file_path))
    labels = [None if v is None else str(v).strip() for v in data[label_column]]
    empty_labels = [f"row {i + 2}" for i, v in enumerate(labels) if not v]
    if empty_labels:
        problems.append(
            f"empty {label_column} in {', '.join(empty_labels[:5])}"
            + (f" and {len(empty_labels) - 5} more" if len(empty_labels) > 5 else "")
        )
    masks: list[tuple[str, Any] | None] = [None] * table.num_rows
    if mask_column:
        for row, value in enumerate(data[mask_column]):
            text = "" if value is None else str(value).strip()
            if not text:
                continue
            try:
                masks[row] = ("box", parse_box(text))
            except ValueError as error:
                if set(text) <= set("0123456789.,;-+eE "):
                    problems.append(f"row {row + 2}: {mask_column}: {error}")
                    continue
                mask_path = Path(text).expanduser()
                masks[row] = (
                    "file",
                    str(mask_path if mask_path.is_absolute() else root / mask_path),
                )
    if problems:
        raise ManifestError(
            f"Manifest {path}: {'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more problems)" if len(problems) > 5 else "")
        )
    mapping = _label_mapping([v for v in labels if v], class_names, str(path))
    groups = data.get(group_column) if group_column else None
    ids = _unique_ids(rel_paths)
    records = [
        ImageRecord(
            sample_id=ids[row],
            index=row,
            path=abs_paths[row],
            label=mapping[labels[row]],  # type: ignore[index]
            label_name=labels[row],  # type: ignore[arg-type]
            group=None if groups is None or groups[row] is None else str(groups[row]).strip(),
            mask=masks[row],
        )
        for row in range(table.num_rows)
    ]
    notes = []
    if not class_names and not all(_is_int(v) for v in mapping):
        order = ", ".join(
            f"{name}={index}" for name, index in sorted(mapping.items(), key=lambda kv: kv[1])
        )
        notes.append(
            f"labels mapped to class indices in sorted order ({order}); pass --classes FILE "
            "if the model uses another order"
        )
    label_names = sorted(mapping, key=lambda name: mapping[name])
    return ImageSet(
        records,
        str(path),
        "manifest",
        label_names=label_names,
        has_groups=group_column is not None,
        has_masks=mask_column is not None,
        notes=notes,
    )


def read_image_set(
    data: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
    mask_column: str | None = None,
    slices: str | None = None,
    volumes: bool = False,
) -> ImageSet:
    """List the samples of an image folder or a CSV/Parquet manifest.

    Parameters
    ----------
    data:
        A directory with one sub-folder per class, or a ``.csv``/``.tsv``/``.parquet`` file
        with at least ``path`` and ``label`` columns (paths relative to the manifest's folder).
    class_names:
        The model's class names in output order; labels that are names are mapped with them.
    path_column, label_column, group_column, mask_column:
        Manifest column names. A mask cell is a path to a binary image (white = region) or
        a box ``x0,y0,x1,y1`` in image pixels; an empty cell means no mask.
    slices:
        ``"axial"``, ``"coronal"`` or ``"sagittal"``: each 3-D NIfTI volume becomes one
        sample per slice of that plane (:func:`expand_slices`), for 2-D models. ``None``
        keeps one sample per file (a volume is then an error row naming this option).
    volumes:
        For 3-D models: in an image folder, the DICOM files of one folder are one sample
        (a series, :func:`series_samples`); NIfTI files are one sample each. A manifest
        names a series by its folder.

    Raises
    ------
    ManifestError
        Missing columns, empty values, labels the model does not know, no images.
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise ManifestError(
            f"--data {data}: no such file or directory (give an image folder or a CSV/Parquet "
            "manifest)"
        )
    if path.is_dir():
        if group_column or mask_column:
            raise ManifestError(
                "--group-column/--mask-column need a manifest (CSV/Parquet); an image folder "
                "only gives labels"
            )
        image_set = _read_folder(path, class_names)
    elif path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ManifestError(
            f"--data {data}: not a directory or a manifest ({', '.join(MANIFEST_SUFFIXES)})"
        )
    else:
        image_set = _read_manifest(
            path,
            class_names,
            path_column=path_column,
            label_column=label_column,
            group_column=group_column,
            mask_column=mask_column,
        )
    if volumes:
        if slices is not None:
            raise ManifestError(
                "--slices cuts volumes into 2-D slices for a 2-D model; a 3-D model takes "
                "whole volumes (drop --slices)"
            )
        return series_samples(image_set)
    if slices is None:
        return image_set
    try:
        return expand_slices(image_set, slices)
    except ValueError as error:
        raise ManifestError(str(error)) from error


# -- decoding in workers -----------------------------------------------------------------------


class ImageRecordDataset(torch.utils.data.Dataset):
    """Decode records to model inputs; a bad file gives ``ok=False`` instead of raising.

    The preprocessing's ``window`` is passed to :func:`load_image` (DICOM, NIfTI and 16-bit
    images).

    Each item is a dict: ``position`` (index into ``records``), ``image`` (``(C, H, W)``
    float), ``mask`` (``(H, W)`` bool), ``has_mask``, ``size`` (the file's ``(width,
    height)``), ``ok`` and ``error`` (``""`` if ok).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        preprocessing: Preprocessing,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.records = list(records)
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def _mask(self, record: ImageRecord, size: tuple[int, int]) -> np.ndarray | None:
        if record.mask is None:
            return None
        kind, value = record.mask
        width, height = size
        if kind == "box":
            x0, y0, x1, y1 = value
            if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
                raise ImageLoadError(
                    f"the box {mask_text(record.mask)[4:]} lies outside the {width}x{height} "
                    "image (boxes are x0,y0,x1,y1 in the image's pixels)"
                )
            return self.preprocessing.box_mask(value, size)
        mask_image = load_image(value, max_pixels=self.max_pixels)
        mask_width, mask_height = mask_image.size
        # Another size is stretched to the image; another shape is another image's mask.
        if abs(mask_width * height - mask_height * width) > 0.02 * width * mask_height:
            raise ImageLoadError(
                f"{value} is {mask_width}x{mask_height} but the image is {width}x{height}, "
                "another aspect ratio: is it this image's mask?"
            )
        return self.preprocessing.mask(mask_image, size)

    def _plain_png(self, path: str) -> PlainPng | None:
        # Same pixels as Pillow's path at about half the cost (see data.png_fast).
        size = self.preprocessing.unchanged_size()
        if size is None or not path.lower().endswith(".png"):
            return None
        return read_plain_png(
            path, size=size, max_pixels=self.max_pixels, channels=self.preprocessing.channels
        )

    def _volume_item(self, record: ImageRecord, item: dict[str, Any]) -> np.ndarray | None:
        """Fill ``item`` with a volume's tensor; return its region at the input size."""
        volume = load_volume(
            record.path, window=self.preprocessing.window, max_pixels=self.max_pixels
        )
        item["size"] = tuple(volume.spatial_shape[1:][::-1])
        item["image"] = self.preprocessing.volume(volume.display())
        if record.mask is None:
            return None
        try:
            region = volume_region(record.mask, record.path, max_pixels=self.max_pixels)
        except ImageLoadError as error:
            raise ImageLoadError(f"mask of {record.sample_id}: {error}") from error
        return self.preprocessing.volume_mask(region)

    def __getitem__(self, position: int) -> dict[str, Any]:
        record = self.records[position]
        if self.preprocessing.is_3d:
            return self._get_volume(position, record)
        height, width = self.preprocessing.size
        item: dict[str, Any] = {"position": position, "ok": True, "error": "", "size": (0, 0)}
        mask = None
        try:
            plain = self._plain_png(record.path)
            if plain is not None:
                item["size"] = plain.size
                item["image"] = self.preprocessing.from_pixels(plain.pixels)
            else:
                image = load_image(
                    record.path, max_pixels=self.max_pixels, window=self.preprocessing.window
                )
                item["size"] = image.size
                item["image"] = self.preprocessing(image)
            try:
                mask = self._mask(record, item["size"])
            except ImageLoadError as error:
                raise ImageLoadError(f"mask of {record.sample_id}: {error}") from error
        except ImageLoadError as error:
            item.update(ok=False, error=str(error))
        except Exception as error:  # one bad sample must not stop a long run
            item.update(ok=False, error=f"{record.path}: {type(error).__name__}: {error}")
        if not item["ok"]:
            item["image"] = torch.zeros(self.preprocessing.channels, height, width)
        item["has_mask"] = mask is not None
        item["mask"] = (
            torch.from_numpy(mask)
            if mask is not None
            else torch.zeros(height, width, dtype=torch.bool)
        )
        return item

    def _get_volume(self, position: int, record: ImageRecord) -> dict[str, Any]:
        shape = self.preprocessing.input_shape
        item: dict[str, Any] = {"position": position, "ok": True, "error": "", "size": (0, 0)}
        mask = None
        try:
            mask = self._volume_item(record, item)
        except ImageLoadError as error:
            item.update(ok=False, error=str(error))
        except Exception as error:  # one bad sample must not stop a long run
            item.update(ok=False, error=f"{record.path}: {type(error).__name__}: {error}")
        if not item["ok"]:
            item["image"] = torch.zeros(self.preprocessing.channels, *shape)
            mask = None
        item["has_mask"] = mask is not None
        item["mask"] = (
            torch.from_numpy(mask) if mask is not None else torch.zeros(shape, dtype=torch.bool)
        )
        return item


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into one batch dict (lists for strings)."""
    return {
        "position": torch.tensor([it["position"] for it in items], dtype=torch.long),
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "has_mask": torch.tensor([it["has_mask"] for it in items], dtype=torch.bool),
        "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool),
        "size": torch.tensor([it["size"] for it in items], dtype=torch.long),
        "error": [it["error"] for it in items],
    }


def mask_text(mask: tuple[str, Any] | None) -> str | None:
    """A record's mask as text: ``box:x0,y0,x1,y1``, ``file:PATH`` or ``None``."""
    if mask is None:
        return None
    kind, value = mask
    if kind == "box":
        return "box:" + ",".join(f"{v:g}" for v in value)
    return f"file:{value}"


def mask_from_text(text: str | None) -> tuple[str, Any] | None:
    """Inverse of :func:`mask_text`."""
    if not text:
        return None
    kind, _, value = text.partition(":")
    if kind == "box":
        return ("box", parse_box(value))
    return ("file", value)


def make_loader(
    dataset: ImageRecordDataset,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    worker_init: Callable[[], None] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader in data order that decodes images in ``num_workers`` processes.

    ``worker_init`` runs first in each worker process (e.g. to close inherited files).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {num_workers}")
    workers = min(num_workers, max(0, len(dataset)))
    if workers > 0:
        dataset.preprocessing.warm_up()
    return _ordered_loader(
        dataset, batch_size, collate_samples, workers, prefetch=4, worker_init=worker_init
    )


def make_chunk_loader(
    chunks: torch.utils.data.Dataset,
    *,
    num_workers: int,
    worker_init: Callable[[], None] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``chunks`` (each item already a whole batch, returned as is), in
    order, with ``num_workers`` processes of one torch thread each."""
    workers = min(num_workers, max(0, len(chunks)))
    return _ordered_loader(chunks, None, _as_is, workers, prefetch=2, worker_init=worker_init)


def _ordered_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int | None,
    collate: Callable[[Any], Any],
    workers: int,
    *,
    prefetch: int,
    worker_init: Callable[[], None] | None,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=prefetch if workers > 0 else None,
        worker_init_fn=partial(_worker_init, worker_init) if workers > 0 else None,
    )


def _as_is(item: Any) -> Any:
    return item


def _worker_init(extra: Callable[[], None] | None, _worker_id: int) -> None:
    if extra is not None:
        extra()
    # Workers need no intra-op threads: each keeps one core busy. numpy's BLAS threads
    # too: OpenBLAS spins its idle threads, which then take the cores from the others.
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it BLAS keeps its threads
        return
    threadpool_limits(1)
