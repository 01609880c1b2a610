"""Where the explorer's sample images come from: the demo test set or a data directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shortcut_detect.app.inputs import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ExplorerInputError,
    read_image,
    resolve_inside,
)
from shortcut_detect.data.demo import make_demo_test_set
from shortcut_detect.data.images import ManifestError, read_image_set

__all__ = [
    "DataSource",
    "DemoSource",
    "RecordSource",
    "Sample",
    "SampleRecord",
    "SampleSource",
    "to_uint8_rgb",
]

THUMBNAIL_SIDE = 96
MAX_LISTED_FILES = 200_000


@dataclass(frozen=True)
class Sample:
    """One image to explain.

    Exactly one of ``image`` (a PIL image, passed through the model's transform) and
    ``array`` (a ready ``(C, H, W)`` float model input, e.g. the demo's synthetic images)
    is set.
    """

    sample_id: str
    caption: str
    image: Image.Image | None = None
    array: np.ndarray | None = None
    label: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.image is None) == (self.array is None):
            raise ValueError("A Sample has either an image or an array, not both or neither")


class SampleSource(Protocol):
    """A collection of samples addressed by id."""

    name: str

    def ids(self) -> Sequence[str]:
        """Every sample id, in a stable order."""
        ...

    def get(self, sample_id: str) -> Sample:
        """The sample with this id; :class:`ExplorerInputError` for an unknown id."""
        ...


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` or ``(H, W[, C])`` image in [0, 1] as uint8 ``(H, W, 3)``."""
    values = np.asarray(array, dtype=np.float32)
    if values.ndim == 3 and values.shape[0] in (1, 3) and values.shape[-1] not in (1, 3):
        values = values.transpose(1, 2, 0)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.uint8(np.clip(values, 0.0, 1.0) * 255 + 0.5)


def thumbnail(sample: Sample, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """A small RGB picture of the sample for the gallery (pixelated when enlarged)."""
    if sample.array is not None:
        picture = Image.fromarray(to_uint8_rgb(sample.array))
    else:
        assert sample.image is not None
        picture = sample.image.convert("RGB")
    width, height = picture.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return picture.resize(size, resample)


class DemoSource:
    """The demo's held-out synthetic test set (marker independent of the label)."""

    name = "demo test set"

    def __init__(self, dataset: object | None = None) -> None:
        if dataset is None:
            dataset = make_demo_test_set()
        self.dataset = dataset

    def ids(self) -> Sequence[str]:
        return [str(index) for index in range(len(self.dataset))]

    @property
    def marker_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` where the demo's marker is drawn (when present)."""
        return tuple(int(v) for v in self.dataset.marker_box)  # type: ignore[return-value]

    def get(self, sample_id: str) -> Sample:
        data = self.dataset
        try:
            index = int(str(sample_id).strip())
        except ValueError as error:
            raise ExplorerInputError(f"Unknown demo sample {sample_id!r}") from error
        if not 0 <= index < len(data):
            raise ExplorerInputError(
                f"Demo sample {index} does not exist; there are {len(data)} (0..{len(data) - 1})."
            )
        label = data.class_names[int(data.labels[index])]
        group = "marker" if int(data.groups[index]) == 1 else "no marker"
        return Sample(
            sample_id=str(index),
            caption=f"#{index} {label} · {group}",
            array=data.images[index],
            label=label,
            group=group,
        )


@dataclass(frozen=True)
class SampleRecord:
    """Where a listed sample's file is, and what the data says about it."""

    path: str
    label: str | None = None
    group: str | None = None


class RecordSource:
    """Samples listed by id (a data set, an audit's rows).

    The listed files are the allow-list: an id opens its own file and nothing else. A
    name that is not a listed id is accepted only as a path to an image inside ``root``
    (after resolving ``..`` and links), so crafted names cannot reach other files.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        records: dict[str, SampleRecord],
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.name = name
        self.root = Path(root).resolve()
        self.max_pixels = max_pixels
        self._records = dict(records)
        self._ids = list(self._records)

    def ids(self) -> Sequence[str]:
        return self._ids

    def get(self, sample_id: str) -> Sample:
        sample_id = str(sample_id)
        record = self._records.get(sample_id)
        if record is None:
            path = resolve_inside(self.root, sample_id)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ExplorerInputError(f"{sample_id!r} is not an image file.")
            record = SampleRecord(str(path))
        image = read_image(record.path, max_pixels=self.max_pixels, max_bytes=None)
        details = [part for part in (record.label, record.group) if part is not None]
        caption = " · ".join([Path(sample_id).name if details else sample_id, *details])
        return Sample(
            sample_id=sample_id,
            caption=caption,
            image=image,
            label=record.label,
            group=record.group,
        )


class DataSource(RecordSource):
    """The images of ``--data``: an image folder (one sub-folder per class), a flat folder
    of images, or a CSV/Parquet manifest (see :func:`shortcut_detect.data.images.read_image_set`).

    Samples are addressed by their id (the path relative to the data root).
    """

    def __init__(
        self,
        data: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        group_column: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        path = data_path(data)
        root = path if path.is_dir() else path.parent
        records = listed_records(
            path,
            _scan,
            class_names=class_names,
            group_column=group_column,
            path_column=path_column,
            label_column=label_column,
        )
        if not records:
            raise ExplorerInputError(f"No image files under {root}.")
        super().__init__(str(path), root, records, max_pixels=max_pixels)


def data_path(data: str | Path) -> Path:
    """``--data`` as an absolute path; :class:`ExplorerInputError` if it does not exist."""
    path = Path(data).expanduser().resolve()
    if not path.exists():
        raise ExplorerInputError(f"--data {data}: no such file or directory.")
    return path


def listed_records(
    path: Path, scan: Callable[[Path], list[str]], **options: Any
) -> dict[str, SampleRecord]:
    """The samples of ``path``: those of :func:`~shortcut_detect.data.images.read_image_set`
    (a class-folder tree or a manifest; ``options`` are its keyword arguments), or for a
    folder it cannot read (no class sub-folders) the relative paths ``scan(folder)`` finds.

    Raises
    ------
    ExplorerInputError
        A manifest that cannot be read.
    """
    try:
        image_set = read_image_set(path, **options)
    except ManifestError as error:
        if not path.is_dir():
            raise ExplorerInputError(str(error)) from error
        return {sample_id: SampleRecord(str(path / sample_id)) for sample_id in scan(path)}
    return {
        record.sample_id: SampleRecord(record.path, record.label_name, record.group)
        for record in image_set.records
    }


def _scan(root: Path) -> list[str]:
    """Image files under ``root`` (hidden folders skipped), as relative POSIX paths."""
    found: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file_name in sorted(files):
            if Path(file_name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(folder) / file_name).relative_to(root).as_posix())
                if len(found) >= MAX_LISTED_FILES:
                    return found
    return found
