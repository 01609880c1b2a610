"""``shortcut-detect explain`` for 3-D models: one heatmap per volume, written as pictures.

Each volume (a NIfTI file, a DICOM series folder, a multi-frame DICOM volume) is read as
the audit reads it (:func:`~shortcut_detect.data.images.load_volume`: the window, RAS voxel
order, trilinear resize to the model's input), explained once, and written as:

* ``STEM_sagittal.png``, ``STEM_coronal.png``, ``STEM_axial.png``: the slice of each plane
  through the heatmap's peak, image on the left, overlay on the right;
* ``STEM_heatmap.npy``: the raw map at the layer's resolution (canonical ``[x, y, z]``);
* with ``export_nifti``: ``STEM_heatmap.nii.gz`` on the source's voxels and affine (an
  overlay in 3D Slicer or ITK-SNAP).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shortcut_detect.app.volume_panel import slice_view
from shortcut_detect.audit.nifti_export import save_volume_heatmap
from shortcut_detect.data.images import load_volume
from shortcut_detect.gradcam import GradCAMHeatmapGenerator, class_probabilities, top_predictions
from shortcut_detect.viz_volume import PLANE_AXES, grey_volume, peak_voxel

__all__ = ["explain_volumes", "peak_millimetres"]

_GAP = 4  # pixels between the image and the overlay


def peak_millimetres(
    point: Sequence[int], input_shape: Sequence[int], volume: Any
) -> list[float] | None:
    """Scanner (RAS+, mm) coordinates of a voxel ``point`` of the model input, for the
    canonical volume it was resized from (``None`` without an affine)."""
    if volume.affine is None:
        return None
    native = np.asarray(volume.spatial_shape[:3], dtype=np.float64)
    scale = native / np.asarray(input_shape, dtype=np.float64)
    # Voxel centres: trilinear resizing (align_corners=False) maps i to (i + 0.5) * s - 0.5.
    index = (np.asarray(point, dtype=np.float64) + 0.5) * scale - 0.5
    return [round(float(v), 3) for v in (volume.affine @ np.append(index, 1.0))[:3]]


def _write_planes(out: Path, stem: str, volume: np.ndarray, heat: np.ndarray) -> dict[str, str]:
    files = {}
    for plane in PLANE_AXES:
        shown = slice_view(volume, heat, plane)
        gap = np.full((shown.image.shape[0], _GAP, 3), 255, dtype=np.uint8)
        target = out / f"{stem}_{plane}.png"
        Image.fromarray(np.concatenate([shown.image, gap, shown.overlay], axis=1)).save(target)
        files[plane] = str(target)
    return files


def explain_volumes(
    loaded: Any,
    layer: str,
    volumes: Sequence[tuple[str, str]],
    out: str | Path,
    *,
    method: str = "gradcam",
    target: int | None = None,
    window: str | None = None,
    export_nifti: bool = False,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Explain volumes with a 3-D model and write their pictures (see the module doc).

    Parameters
    ----------
    loaded:
        A 3-D :class:`~shortcut_detect.models.LoadedModel`.
    layer, method, target:
        The layer, CAM method and class index explained (``None``: each volume's
        predicted class).
    volumes:
        ``(source, stem)`` per volume: the file or series folder, and the output name stem.
    window:
        The intensity window (``None``: the model's, else the file's own or percentiles).
    export_nifti:
        Also write each heatmap as NIfTI on the source's voxels.

    Returns
    -------
    list of dict
        Per volume: ``image``, ``explained_class``, ``top_predictions``, the written
        ``slices`` (plane -> PNG), ``heatmap``, ``peak_voxel`` (``[x, y, z]`` of the model
        input), ``peak_mm`` (scanner RAS+ coordinates), ``input_shape`` and, with
        ``export_nifti``, ``nifti`` and ``pixel_spacing_mm``.
    """
    out = Path(out)
    window = window if window is not None else loaded.transform.window
    shape = tuple(loaded.transform.input_shape)
    results = []
    with GradCAMHeatmapGenerator(
        loaded.model, layer, device=loaded.device, method=method
    ) as generator:
        for source, stem in volumes:
            volume = load_volume(source, window=window)
            display = volume.display()
            tensor = loaded.transform.volume(display)
            explanation = generator.explain(tensor[None], [("logits", target)])[0]
            heat = np.asarray(explanation.heatmaps[0], dtype=np.float32)
            probabilities = class_probabilities(explanation.head_output)[0]
            point = peak_voxel(heat)
            row: dict[str, Any] = {
                "image": source,
                "explained_class": loaded.class_names[int(explanation.target_indices[0])],
                "top_predictions": top_predictions(probabilities, loaded.class_names, top_k),
                "slices": _write_planes(out, stem, grey_volume(display, shape), heat),
                "heatmap": str(out / f"{stem}_heatmap.npy"),
                "peak_voxel": list(point),
                "peak_mm": peak_millimetres(point, shape, volume),
                "input_shape": list(shape),
            }
            np.save(row["heatmap"], np.asarray(explanation.raw_heatmaps[0], dtype=np.float32))
            if export_nifti:
                row.update(
                    save_volume_heatmap(
                        heat,
                        source,
                        out / f"{stem}_heatmap.nii.gz",
                        window="auto" if window is None else window,
                    )
                )
            results.append(row)
    return results
