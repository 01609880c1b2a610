"""``audit --export-nifti``: an audit's heatmaps as NIfTI files aligned with their sources.

Each heatmap goes back onto its source's voxels and is saved with the source's affine, so it
opens as an overlay on the scan in 3D Slicer or ITK-SNAP:

* a volume audited by a 3-D model (NIfTI file, DICOM series folder): one 3-D map in the
  source's own voxel order and affine (for a series, the series' geometry);
* a volume audited slice-wise (``--slices``): one 3-D map assembled from its slices;
* a 2-D DICOM (or 2-D NIfTI) image: an overlay PNG at the source's size and the source's
  pixel spacing, plus a one-slice NIfTI map when the file has geometry.

Everything is listed in ``DIR/nifti/index.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.audit.store import AuditStore
from shortcut_detect.data.images import is_medical_name, slice_reference, volume_slices
from shortcut_detect.data.medical import read_medical, resample_map, save_heatmap_nifti
from shortcut_detect.data.medical.image import reorientation
from shortcut_detect.data.transforms import Preprocessing

__all__ = ["EXPORT_FOLDER", "export_audit_nifti", "save_volume_heatmap"]

EXPORT_FOLDER = "nifti"
_RAS = [(0, 1), (1, 1), (2, 1)]


def _stem(sample_id: str) -> str:
    sample_id = re.sub(r"\.(nii\.gz|nii|dcm|dicom)$", "", sample_id, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("_") or "sample"


def _to_source_order(heatmap: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A map in the canonical RAS voxel order of ``load_volume`` back on the source's voxels
    (the inverse of :meth:`MedicalImage.canonical`), resampled to the source's shape."""
    perm, flips = reorientation(affine, _RAS)
    canonical = resample_map(heatmap, tuple(shape[axis] for axis in perm))
    if flips:
        canonical = np.flip(canonical, flips)
    return np.ascontiguousarray(canonical.transpose(np.argsort(perm)))


def save_volume_heatmap(
    heatmap: np.ndarray, path: str | Path, target: str | Path, *, window: Any = "auto"
) -> dict[str, Any]:
    """Save a 3-D model's heatmap of the volume ``path`` (a map in the canonical RAS voxel
    order of :func:`~shortcut_detect.data.images.load_volume`, at any resolution) as NIfTI
    on the source's own voxels and affine; returns ``{"nifti", "pixel_spacing_mm"}``."""
    image = read_medical(path, window=window)
    data = _to_source_order(heatmap, image.affine, image.spatial_shape)
    save_heatmap_nifti(data, image.affine, target)
    return {"nifti": str(target), "pixel_spacing_mm": _spacing(image)}


def _export_volume(store: AuditStore, sid: str, path: str, window: str, target: Path) -> dict:
    return save_volume_heatmap(store.heatmaps([sid])[0], path, target, window=window)


def _spacing(image: Any) -> list[float] | None:
    return None if image.spacing is None else [float(v) for v in image.spacing]


def _export_image(
    store: AuditStore, sid: str, path: str, preprocessing: Preprocessing, folder: Path
) -> dict:
    """A 2-D medical image: overlay PNG at the source's size, spacing, NIfTI if it has
    geometry."""
    from PIL import Image

    from shortcut_detect.viz import overlay_heatmap

    image = read_medical(path, window=preprocessing.window or "auto")
    rows, columns = image.spatial_shape[:2]
    heat = store.upsampled([sid], (rows, columns))[0]
    display = image.display()
    overlay_path = folder / f"{_stem(sid)}_overlay.png"
    Image.fromarray(overlay_heatmap(display, heat, alpha=0.45)).save(overlay_path)
    entry: dict[str, Any] = {
        "overlay": str(overlay_path),
        "pixel_spacing_mm": _spacing(image),
        "nifti": None,
    }
    if image.affine is not None:
        target = folder / f"{_stem(sid)}_heatmap.nii.gz"
        save_heatmap_nifti(heat, image.affine, target, shape=(rows, columns))
        entry["nifti"] = str(target)
    return entry


def export_audit_nifti(directory: str | Path) -> Path:
    """Write the heatmaps of an audit's DICOM/NIfTI samples as NIfTI (see the module doc).

    Returns
    -------
    Path
        ``DIR/nifti/index.json``: one entry per exported sample (``sample_id``, ``path``,
        ``nifti``, ``overlay``, ``pixel_spacing_mm``); other samples (PNG, JPEG...) are
        left out.

    Raises
    ------
    ValueError
        The audit used a centre crop (the heatmaps cannot be put back on the source's
        pixels).
    """
    store = AuditStore(directory)
    preprocessing = Preprocessing.from_dict(store.config["preprocessing"])
    if preprocessing.crop:
        raise ValueError(
            "--export-nifti maps heatmaps back onto the source's voxels, which the audit's "
            "centre crop makes impossible; audit with --resize N without --crop"
        )
    window = preprocessing.window or "auto"
    folder = store.root / EXPORT_FOLDER
    folder.mkdir(exist_ok=True)
    table = store.table(["sample_id", "path", "status"])
    samples = [
        (sid, path)
        for sid, path, status in zip(
            table.column("sample_id").to_pylist(),
            table.column("path").to_pylist(),
            table.column("status").to_pylist(),
        )
        if status == "ok"
    ]
    entries: list[dict[str, Any]] = []
    sliced: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for sid, path in samples:
        reference = slice_reference(path)
        if reference is not None:
            sliced.setdefault(reference[:2], []).append((sid, reference[2]))
            continue
        target = folder / f"{_stem(sid)}_heatmap.nii.gz"
        if preprocessing.is_3d:
            entry = _export_volume(store, sid, path, window, target)
        elif is_medical_name(path) or Path(path).is_dir():
            entry = _export_image(store, sid, path, preprocessing, folder)
        else:
            continue
        entries.append({"sample_id": sid, "path": path, **entry})
    for (file, plane), members in sliced.items():
        slices = volume_slices(file, plane, window=preprocessing.window)
        maps = np.zeros((len(slices), *store.cam_size), dtype=np.float32)
        ids = [sid for sid, _ in members]
        for (_, index), heat in zip(members, store.heatmaps(ids)):
            maps[index] = heat
        target = folder / f"{_stem(Path(file).name)}_{plane}_heatmap.nii.gz"
        save_heatmap_nifti(slices.to_volume(maps), slices.volume.affine, target)
        spacing = _spacing(slices.volume)
        entries.extend(
            {
                "sample_id": sid,
                "path": f"{file}#{plane}={index}",
                "nifti": str(target),
                "pixel_spacing_mm": spacing,
            }
            for sid, index in members
        )
    index_path = folder / "index.json"
    index_path.write_text(json.dumps({"exports": entries}, indent=2), encoding="utf-8")
    return index_path
