"""The explorer for 3-D models: one volume at a time, without any web framework.

A 3-D model (``monai:NAME --spatial-dims 3``, ``torchvision:r3d_18``, any model whose first
convolution is 3-D) gets whole volumes: a NIfTI file or a DICOM series folder of ``--data``,
or an uploaded ``.nii`` / ``.nii.gz`` (or multi-frame DICOM) file. Each is read as the audit
reads it (:func:`~shortcut_detect.data.images.load_volume`, the model's window, RAS voxel
order, trilinear resize), so a heatmap here is the audit's heatmap of the same volume.

:class:`VolumeExplorer` is an :class:`~shortcut_detect.app.explorer.Explorer` whose
selections are volumes: the same layer, method and class choices, cache and model lock; its
results hold a 3-D heatmap and the volume as the model saw it, shown a slice at a time by
:meth:`VolumeExplorer.view` (plane and slice, opening at the heatmap's peak). The functions
at the end are the page's callbacks (:mod:`shortcut_detect.app.volume_ui` wires them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from shortcut_detect.app.callbacks import error_message
from shortcut_detect.app.explorer import LIME, PREDICTED, Explorer, HeatmapResult, Selection
from shortcut_detect.app.inputs import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    ExplorerInputError,
    display_name,
    resolve_inside,
)
from shortcut_detect.app.models import ExplorerModel, explorer_model_from_loaded
from shortcut_detect.app.sources import (
    MAX_LISTED_FILES,
    Sample,
    data_path,
    listed_records,
)
from shortcut_detect.app.volume_panel import SliceView, slice_view
from shortcut_detect.data.images import ImageLoadError, is_medical_name, load_volume
from shortcut_detect.data.transforms import Preprocessing
from shortcut_detect.viz_volume import peak_voxel

__all__ = [
    "INTERVENE_REFUSAL",
    "VOLUME_SUFFIXES",
    "ExplainedVolume",
    "VolumeExplorer",
    "VolumeSource",
    "choose_volume",
    "choose_volume_upload",
    "explain_volume",
    "make_volume_explorer",
]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".dicom", ".dic")
NO_VOLUME = "Pick a volume or upload a NIfTI file (.nii, .nii.gz) first."
INTERVENE_REFUSAL = (
    "Removing or transplanting a box is for 2-D images in the app. For volumes, test reliance "
    "on a region with the audit: `shortcut-detect audit ... --mask-column mask` takes 3-D "
    "boxes (x0,y0,z0,x1,y1,z1) or NIfTI masks and runs the interventions on them."
)


def _is_volume_name(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def _read_volume_input(
    path: str | Path, preprocessing: Preprocessing, *, max_pixels: int
) -> np.ndarray:
    """The model input ``(C, D, H, W)`` of a volume file or series folder, as the audit
    makes it (the model's window, RAS voxel order, trilinear resize, normalisation)."""
    try:
        volume = load_volume(path, window=preprocessing.window, max_pixels=max_pixels)
    except (ImageLoadError, OSError, ValueError) as error:
        # The reader names the full (temporary) path; the person knows the file by its name.
        message = str(error).replace(str(path), display_name(path))
        raise ExplorerInputError(f"Could not use this volume: {message}") from error
    return preprocessing.volume(volume.display()).numpy()


class VolumeSource:
    """The volumes of ``--data`` for a 3-D model: NIfTI files and DICOM series folders, one
    sample each, as model inputs.

    ``data`` is a folder with one sub-folder per class, a flat folder (its NIfTI files and
    the folders holding DICOM files), or a CSV/Parquet manifest naming volumes (a series by
    its folder). Only listed ids can be opened.
    """

    def __init__(
        self,
        data: str | Path,
        preprocessing: Preprocessing,
        *,
        group_column: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not preprocessing.is_3d:
            raise ValueError("A VolumeSource feeds a 3-D model; the preprocessing is 2-D")
        path = data_path(data)
        self.name = str(path)
        self.preprocessing = preprocessing
        self.max_pixels = int(max_pixels)
        records = listed_records(path, _scan, group_column=group_column, volumes=True)
        if not records:
            raise ExplorerInputError(
                f"No volumes under {path}: a 3-D model takes NIfTI files (.nii, .nii.gz) and "
                "DICOM series folders."
            )
        self._records = records
        self._ids = list(records)

    def ids(self) -> Sequence[str]:
        return self._ids

    def get(self, sample_id: str) -> Sample:
        record = self._records.get(str(sample_id))
        if record is None:
            raise ExplorerInputError(
                f"No volume {sample_id!r} in {self.name}; pick one of the list."
            )
        array = _read_volume_input(record.path, self.preprocessing, max_pixels=self.max_pixels)
        details = [part for part in (record.label, record.group) if part is not None]
        return Sample(
            sample_id=str(sample_id),
            caption=" · ".join([str(sample_id), *details]),
            array=array,
            label=record.label,
            group=record.group,
        )


def _scan(root: Path) -> list[str]:
    """Volumes under ``root`` (hidden folders skipped): NIfTI files, and each folder holding
    DICOM files as one series, as relative POSIX paths."""
    found: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        if any(is_medical_name(f) and not f.lower().endswith((".nii", ".nii.gz")) for f in files):
            found.append(here.relative_to(root).as_posix() if here != root else ".")
        found.extend(
            (here / f).relative_to(root).as_posix()
            for f in sorted(files)
            if f.lower().endswith((".nii", ".nii.gz"))
        )
        if len(found) >= MAX_LISTED_FILES:
            break
    return found[:MAX_LISTED_FILES]


class VolumeExplorer(Explorer):
    """An :class:`~shortcut_detect.app.explorer.Explorer` for one 3-D model: its selections
    are volumes, its :class:`~shortcut_detect.app.explorer.HeatmapResult` hold the 3-D
    heatmap and the volume ``[x, y, z]`` as the model saw it (both at the model's input
    size), and :meth:`view` cuts a slice of them.

    Parameters
    ----------
    model:
        The 3-D model; its ``transform`` must be its
        :class:`~shortcut_detect.data.transforms.Preprocessing` (which reads volumes).
    source:
        The volumes to pick from (``None``: uploads only).
    options:
        Those of :class:`~shortcut_detect.app.explorer.Explorer` (cache size, limits).
    """

    def __init__(
        self, model: ExplorerModel, source: VolumeSource | None = None, **options: Any
    ) -> None:
        preprocessing = model.transform
        if not isinstance(preprocessing, Preprocessing) or not preprocessing.is_3d:
            raise ValueError(
                f"{model.name}: the volume explorer needs a 3-D model with its Preprocessing "
                "as transform (load it with load_model(..., resize=D,H,W))"
            )
        super().__init__([model], source, **options)
        self.preprocessing = preprocessing

    # -- volumes ----------------------------------------------------------------------------
    def select_upload(self, path: str | Path) -> Selection:
        """An uploaded NIfTI (or multi-frame DICOM) volume, with the size limits."""
        path = Path(path)
        name = display_name(path)
        if not _is_volume_name(name):
            raise ExplorerInputError(
                f"{name} is not a volume: upload a NIfTI file (.nii, .nii.gz) or a multi-frame "
                "DICOM file; a DICOM series is a folder, give it with --data."
            )
        if not path.is_file():
            raise ExplorerInputError(f"No file at {path}.")
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise ExplorerInputError(
                f"{name} is {size / 2**20:.1f} MB; the limit is "
                f"{self.max_upload_bytes / 2**20:.0f} MB (raise it with --max-upload-mb)."
            )
        array = _read_volume_input(path, self.preprocessing, max_pixels=self.max_pixels)
        digest = hashlib.sha1(array.tobytes()).hexdigest()[:16]
        return Selection(key=f"upload:{digest}", caption=name, array=array)

    def input_tensor(self, selection: Selection, model: ExplorerModel) -> torch.Tensor:
        """The model input ``(C, D, H, W)`` of a selected volume."""
        expected = (model.in_channels, *model.input_size)
        array = selection.array
        if array is None or tuple(np.shape(array)) != expected:
            raise ExplorerInputError(
                f"{selection.caption} is not a volume for {model.name} (its input is "
                f"{'x'.join(map(str, expected))}); pick a volume or upload a NIfTI file."
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def display_input(
        self, selection: Selection, tensor: torch.Tensor, model: ExplorerModel
    ) -> np.ndarray:
        """The volume ``[x, y, z]`` in [0, 1] as the model saw it (normalisation undone,
        channels averaged)."""
        values = tensor.detach().float().cpu()
        mean, std = self.preprocessing.mean, self.preprocessing.std
        if mean is not None and std is not None:
            values = values * torch.tensor(std).view(-1, 1, 1, 1) + torch.tensor(mean).view(
                -1, 1, 1, 1
            )
        return values.mean(dim=0).clamp(0.0, 1.0).numpy()

    def explain(
        self,
        selection: Selection,
        model_name: str | None = None,
        layer: str | None = None,
        method: str = "gradcam",
        targets: Sequence[object] = (PREDICTED,),
    ) -> list[HeatmapResult]:
        """3-D heatmaps of one volume (see :meth:`Explorer.explain`); LIME is refused."""
        if str(method).lower() == LIME:
            raise ExplorerInputError(
                "LIME's superpixels are 2-D; explain volumes with a CAM method such as gradcam."
            )
        return super().explain(selection, model_name, layer, method, targets)

    def view(
        self,
        result: HeatmapResult,
        plane: str,
        index: int | None = None,
        opacity: float = 0.45,
        *,
        name: str = "",
    ) -> SliceView:
        """Slice ``index`` of ``plane`` of an explained volume and its heatmap (default:
        the slice through the heatmap's peak), the overlay at ``opacity``; ``name`` starts
        the caption."""
        opacity = float(opacity)
        if not 0.0 <= opacity <= 1.0:
            raise ExplorerInputError(f"Opacity must be between 0 and 1, got {opacity}.")
        return slice_view(result.image, result.heatmap, plane, index, name=name, alpha=opacity)

    # -- what volumes do not have -------------------------------------------------------------
    def region_presets(self, model_name: str | None = None) -> dict[str, tuple[int, int, int, int]]:
        """No 2-D boxes on volumes (see :data:`INTERVENE_REFUSAL`)."""
        return {}

    def intervene_region(self, *args: Any, **kwargs: Any) -> Any:
        """Refused on volumes: :class:`ExplorerInputError` saying what to use instead."""
        raise ExplorerInputError(INTERVENE_REFUSAL)

    def shown_image(self, selection: Selection, model_name: str | None = None) -> np.ndarray:
        """A volume has no single picture: use :meth:`view` on an explained volume."""
        raise ExplorerInputError("A volume is shown a slice at a time; explain it first.")


def make_volume_explorer(
    loaded: Any,
    data: str | Path | None = None,
    *,
    layer: str | None = None,
    group_column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cache_size: int = 256,
    window: str | None = None,
) -> VolumeExplorer:
    """A :class:`VolumeExplorer` for a loaded 3-D model
    (:class:`~shortcut_detect.models.LoadedModel`) and the volumes of ``data``, read with
    the intensity ``window`` (``"auto"``, ``"full"`` or ``"CENTER,WIDTH"``; ``None``: the
    model's, else auto)."""
    if window is not None:
        try:
            loaded = replace(loaded, transform=replace(loaded.transform, window=window))
        except ValueError as error:
            raise ExplorerInputError(str(error)) from error
    model = replace(explorer_model_from_loaded(loaded), input_size=tuple(loaded.input_size))
    if layer is not None:
        model.default_layer = layer
    source = None
    if data is not None:
        source = VolumeSource(
            data, loaded.transform, group_column=group_column, max_pixels=max_pixels
        )
    explorer = VolumeExplorer(
        model,
        source,
        cache_size=cache_size,
        max_pixels=max_pixels,
        max_upload_bytes=max_upload_bytes,
    )
    explorer.layer_choices(model.name)  # fail at start-up, not on the first click
    return explorer


# -- the page's callbacks --------------------------------------------------------------------


class ExplainedVolume(NamedTuple):
    """Outputs of *Generate* on a volume: the slice through the peak, top predictions, a
    status line and the result (kept for moving through the slices)."""

    shown: SliceView | None
    top: dict[str, float] | None
    status: str
    result: HeatmapResult | None


def _picked(selection: Selection, what: str) -> tuple[Selection, str]:
    return selection, f"Selected {what} *{selection.caption}*. Press **Generate**."


def choose_volume(explorer: VolumeExplorer, sample_id: str | None) -> tuple[Any, str]:
    """``(selection, status)`` for a volume of the source."""
    if not sample_id:
        return None, NO_VOLUME
    try:
        return _picked(explorer.select_sample(sample_id), "volume")
    except ExplorerInputError as error:
        return None, error_message(str(error))


def choose_volume_upload(
    explorer: VolumeExplorer, path: str | Path | None, upload_folder: str | Path | None = None
) -> tuple[Any, str]:
    """``(selection, status)`` for an uploaded volume; a path outside ``upload_folder``
    (where the web server stores uploads) is refused."""
    if path is None or str(path) == "":
        return None, "Upload cleared. " + NO_VOLUME
    try:
        if upload_folder is not None:
            path = resolve_inside(upload_folder, path)
        return _picked(explorer.select_upload(path), "upload")
    except ExplorerInputError as error:
        return None, error_message(str(error))


def explain_volume(
    explorer: VolumeExplorer,
    selection: Selection | None,
    layer: str | None,
    method: str | None,
    target: object,
    plane: str,
    opacity: float,
) -> ExplainedVolume:
    """The heatmap of the selected volume, shown at the ``plane`` slice through its peak."""
    if selection is None:
        return ExplainedVolume(None, None, error_message(NO_VOLUME), None)
    try:
        result = explorer.explain(selection, None, layer, method or "gradcam", [target])[0]
        shown = explorer.view(result, plane, None, opacity, name=selection.caption)
    except ExplorerInputError as error:
        return ExplainedVolume(None, None, error_message(str(error)), None)
    peak = ", ".join(str(v) for v in peak_voxel(result.heatmap))
    timing = "from cache" if result.cached else f"computed in {result.seconds:.2f} s"
    status = (
        f"*{selection.caption}*: heatmap of **{result.target_name}** "
        f"(p = {result.target_probability:.3f}) · predicted **{result.predicted_name}** "
        f"({result.predicted_probability:.1%}) · layer `{result.layer}` · {result.method} · "
        f"peak at voxel ({peak}) of the {'x'.join(map(str, result.heatmap.shape))} input · "
        f"{timing}"
    )
    return ExplainedVolume(shown, result.top_dict(), status, result)
